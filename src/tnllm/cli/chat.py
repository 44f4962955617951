"""``tnllm chat``: a conversation with the model on a running server, one job per turn.

Each line read is a user turn; the job carries the whole conversation so far (``messages``) and
its reply streams to stdout as it comes. On a terminal the prompt is ``you> ``; with a file or a
pipe on stdin (``printf 'hi\\nand then?\\n' | tnllm chat``) each line is a turn, replies are
printed one after the other, and the end of the input ends the conversation.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from tnllm.cli.client_cmds import client_for, describe, guarded, stderr
from tnllm.cli.flags import sampling_fields
from tnllm.client import Client, DoneEvent, JobStatus, ResetEvent, TokenEvent
from tnllm.config import Settings


def _turns(console: Console) -> Any:
    """User lines: from the terminal with a prompt, else from stdin as it is; blank lines skipped."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def reply(
    client: Client, messages: list[dict[str, str]], fields: dict[str, Any], console: Console
) -> str | None:
    """Stream the model's answer to ``messages`` to stdout; its text, or None when the job failed."""
    job = client.submit(messages=messages, **fields)
    text = ""
    with console.status("thinking…", spinner="dots") as status:
        events = client.stream(job.id)
        first = next(events)
        status.stop()
    for event in itertools.chain([first], events):
        if isinstance(event, TokenEvent):
            text += event.text
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ResetEvent):
            text = ""
        elif isinstance(event, DoneEvent) and event.job.status is not JobStatus.SUCCEEDED:
            sys.stdout.write("\n")
            console.print(f"[red]{escape(describe(event.job))}[/]")
            return None
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm chat [--system TEXT] [sampling flags]``: one job per user line; EOF ends."""

    def run() -> int:
        console = stderr()
        fields = sampling_fields(args)
        if args.priority is not None:
            fields["priority"] = args.priority
        history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        with client_for(settings) as client:
            for line in _turns(console):
                turn = [*history, {"role": "user", "content": line}]
                answer = reply(client, turn, fields, console)
                if answer is not None:
                    history = [*turn, {"role": "assistant", "content": answer}]
        return 0

    return guarded("chat", run)
