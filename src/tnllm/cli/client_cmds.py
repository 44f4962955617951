"""The client commands: ``tnllm submit | jobs | status | wait | stream | cancel`` (``chat`` is in
``cli/chat.py``), on ``tnllm.client`` against a running server.

Human output by default: the job's text on stdout, everything about the job (a spinner with the
queue position, the summary line) on stderr through rich, so ``tnllm submit --wait "hi" > out.txt``
keeps only the text. ``--json`` prints the job object (``--stream``: one JSON object per event).
A user's mistake (unknown job, server down, refused request) is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from tnllm.cli.flags import sampling_fields
from tnllm.client import (
    Client,
    ClientError,
    DoneEvent,
    InvalidRequest,
    JobPublic,
    JobStatus,
    ResetEvent,
    RetryPolicy,
    StreamEvent,
    TokenEvent,
)
from tnllm.config import Settings

#: Exit status of a job that ended without succeeding (failed or cancelled).
JOB_DID_NOT_SUCCEED = 1


def client_for(settings: Settings) -> Client:
    """A client on ``--url`` / TNLLM_URL with ``--api-key`` / TNLLM_API_KEY."""
    return Client(settings.client_url(), api_key=settings.api_key, retry=RetryPolicy(retries=2))


def stderr() -> Console:
    """Where progress and summaries go (stdout carries only the job's text or JSON)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def guarded(command: str, run: Callable[[], int]) -> int:
    """Run a client command: its client errors become one line on stderr (exit 2 for a refused
    request, 1 for the rest), Ctrl-C a quiet exit."""
    try:
        return run()
    except InvalidRequest as exc:
        print(f"tnllm {command}: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"tnllm {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tnllm {command}: interrupted (the job goes on; `tnllm cancel ID` stops it)", file=sys.stderr)
        return 130


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def job_json(job: JobPublic) -> dict[str, Any]:
    """The job object as the API sends it."""
    return job.model_dump(mode="json")


def describe(job: JobPublic) -> str:
    """``queued · position 2`` / ``running`` / ``succeeded · 16 tokens (length) · 0.4 s``..."""
    if job.status is JobStatus.QUEUED:
        return "queued" + (f" · position {job.queue_position}" if job.queue_position is not None else "")
    words = [job.status.value]
    if job.result is not None:
        usage = job.result.usage
        words.append(
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} tokens ({job.result.finish_reason})"
        )
    if job.error is not None:
        words.append(f"{job.error.type}: {job.error.message}")
    if job.started_at and job.finished_at:
        words.append(f"{(job.finished_at - job.started_at).total_seconds():.2f} s")
    return " · ".join(words)


def outcome(job: JobPublic, console: Console) -> int:
    """The summary line on stderr; 0 when the job succeeded."""
    mark = "[green]✓[/]" if job.status is JobStatus.SUCCEEDED else "[red]✗[/]"
    console.print(f"{mark} job {job.id} {escape(describe(job))}")
    return 0 if job.status is JobStatus.SUCCEEDED else JOB_DID_NOT_SUCCEED


@contextmanager
def spinner(console: Console, text: str) -> Iterator[Status]:
    """A transient spinner on stderr (nothing when stderr is not a terminal)."""
    with console.status(text, spinner="dots") as status:
        yield status


def wait_until_started(client: Client, job: JobPublic, status: Status) -> JobPublic:
    """Poll while the job is queued, showing its queue position."""
    while job.status is JobStatus.QUEUED:
        status.update(escape(f"job {job.id} {describe(job)}"))
        time.sleep(0.5)
        job = client.get(job.id)
    return job


def follow_stream(client: Client, job: JobPublic, console: Console, as_json: bool) -> int:
    """Print the job's tokens live (or its events as JSON lines); the summary at the end."""
    with spinner(console, escape(f"job {job.id} {describe(job)}")) as status:
        job = wait_until_started(client, job, status)
        events = client.stream(job.id)
        first = next(events)  # the spinner turns while the job prefills
    final: JobPublic | None = None
    for event in itertools.chain([first], events):
        if as_json:
            print_json(event.model_dump(mode="json", exclude={"job"}) | _job_of(event))
        elif isinstance(event, TokenEvent):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ResetEvent):
            console.print(f"\n[yellow]the job restarted ({escape(event.reason)}): its text starts again[/]")
        if isinstance(event, DoneEvent):
            final = event.job
    if as_json:
        return 0 if final is not None and final.status is JobStatus.SUCCEEDED else JOB_DID_NOT_SUCCEED
    sys.stdout.write("\n")
    assert final is not None  # the stream ends with its done event, or raises
    return outcome(final, console)


def _job_of(event: StreamEvent) -> dict[str, Any]:
    return {"job": job_json(event.job)} if isinstance(event, DoneEvent) else {}


def follow_wait(
    client: Client, job: JobPublic, console: Console, as_json: bool, timeout: float | None
) -> int:
    """Wait with a spinner (queue position, then running); print the text (or the job as JSON)."""
    with spinner(console, escape(f"job {job.id} {describe(job)}")) as status:

        def show(j: JobPublic) -> None:
            status.update(escape(f"job {j.id} {describe(j)}"))

        final = client.wait(job.id, timeout=timeout, long_poll=1.0, on_update=show)
    if as_json:
        print_json(job_json(final))
        return 0 if final.status is JobStatus.SUCCEEDED else JOB_DID_NOT_SUCCEED
    if final.result is not None:
        sys.stdout.write(final.result.text + "\n")
    return outcome(final, console)


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm submit PROMPT [flags] [--wait | --stream] [--json]``."""

    def run() -> int:
        fields = sampling_fields(args)
        for name in ("priority", "metadata"):
            if getattr(args, name) is not None:
                fields[name] = getattr(args, name)
        if args.webhook:
            fields["webhook"] = {"url": args.webhook}
        console = stderr()
        with client_for(settings) as client:
            job = client.submit(args.prompt, idempotency_key=args.idempotency_key, **fields)
            if args.stream:
                return follow_stream(client, job, console, args.json)
            if args.wait:
                return follow_wait(client, job, console, args.json, None)
        if args.json:
            print_json(job_json(job))
        else:
            print(job.id)
            console.print(escape(f"job {job.id} {describe(job)}; follow it with `tnllm stream {job.id}`"))
        return 0

    return guarded("submit", run)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm status ID [--json]``."""

    def run() -> int:
        with client_for(settings) as client:
            job = client.get(args.id)
        if args.json:
            print_json(job_json(job))
            return 0
        print(f"{job.id} {describe(job)}")
        if job.result is not None:
            print(job.result.text)
        return 0

    return guarded("status", run)


def cmd_wait(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm wait ID [--timeout S] [--json]``: exit 0 only when the job succeeded."""

    def run() -> int:
        with client_for(settings) as client:
            return follow_wait(client, client.get(args.id), stderr(), args.json, args.timeout)

    return guarded("wait", run)


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm stream ID [--json]``."""

    def run() -> int:
        with client_for(settings) as client:
            return follow_stream(client, client.get(args.id), stderr(), args.json)

    return guarded("stream", run)


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm cancel ID [--json]``."""

    def run() -> int:
        with client_for(settings) as client:
            job = client.cancel(args.id)
        if args.json:
            print_json(job_json(job))
        elif job.status is JobStatus.CANCELLED:
            print(f"cancelled job {job.id}")
        else:
            print(f"job {job.id} is running: it stops within one step and keeps its partial text")
        return 0

    return guarded("cancel", run)


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm jobs [--status S] [--limit N] [--json]``: a table, or one JSON object per line."""

    def run() -> int:
        with client_for(settings) as client:
            jobs = client.list_jobs(args.status, page_size=100, limit=args.limit or None)
            if args.json:
                for job in jobs:
                    print_json(job_json(job))
                return 0
            table = Table(box=None)
            # every column but the prompt keeps its width; the prompt takes what is left
            for name, width in (("id", 24), ("status", 9), ("created", 11)):
                table.add_column(name, no_wrap=True, min_width=width)
            table.add_column("tokens", no_wrap=True, min_width=6, justify="right")
            table.add_column("prompt", no_wrap=True, overflow="ellipsis")
            for job in jobs:
                table.add_row(*_row(job))
        Console(highlight=False).print(table)
        return 0

    return guarded("jobs", run)


def _row(job: JobPublic) -> list[str]:
    state = job.status.value
    if job.queue_position is not None:
        state += f" (#{job.queue_position})"
    tokens = str(job.result.usage.completion_tokens) if job.result else ""
    text = job.prompt if job.prompt is not None else (job.messages[-1].content if job.messages else "")
    preview = " ".join(text.split())
    created = job.created_at.astimezone().strftime("%m-%d %H:%M")
    return [job.id, state, created, tokens, preview]
