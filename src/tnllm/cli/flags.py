"""Command-line flags shared by several ``tnllm`` commands: the sampling flags (built from the one
``SamplingParams`` contract: names, help, types) and the client commands' parsers. Only argparse and
the torch-free protocol are imported here, so building the parser stays cheap."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tnllm.protocol.jobs import JobStatus
from tnllm.protocol.sampling import SamplingParams
from tnllm.protocol.tasks import MAX_PRIORITY, MIN_PRIORITY


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``SamplingParams`` field (``--max-new-tokens``...); absent means the contract's
    default, so the CLI holds no second copy of the defaults."""
    group = parser.add_argument_group("sampling")
    for name, field in SamplingParams.model_fields.items():
        flag, text = "--" + name.replace("_", "-"), field.description
        if name == "stop":
            group.add_argument(flag, action="append", help=f"{text} Repeatable.")
        elif field.annotation is bool:
            group.add_argument(flag, action="store_true", default=None, help=text)
        elif field.annotation not in (int, float, int | None, float | None):
            group.add_argument(flag, type=json.loads, default=None, help=f"{text} (JSON)")
        else:
            number = float if field.annotation is float else int
            group.add_argument(flag, type=number, default=None, help=text)


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags that were given, by contract field name."""
    given = {name: getattr(args, name, None) for name in SamplingParams.model_fields}
    return {name: value for name, value in given.items() if value is not None}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server URL (default: TNLLM_URL, else http://127.0.0.1:TNLLM_PORT)")
    parser.add_argument("--api-key", help="API key (default: TNLLM_API_KEY)")


def _job_flags(parser: argparse.ArgumentParser) -> None:
    """What a job carries besides its text: priority, metadata, webhook, idempotency key."""
    parser.add_argument(
        "--priority", type=int, choices=range(MIN_PRIORITY, MAX_PRIORITY + 1), metavar="0-9",
        help="higher runs first (default 0)",
    )  # fmt: skip
    parser.add_argument("--metadata", type=_json_object, help="JSON object echoed back with the job")
    parser.add_argument("--webhook", metavar="URL", help="POST the job's end to this URL (signed)")
    parser.add_argument("--idempotency-key", help="same key + same body = the same job (default: a new key)")


def add_client_parsers(sub: Any) -> None:
    """``submit``, ``jobs``, ``status``, ``wait``, ``stream``, ``cancel`` and ``chat``."""
    submit = sub.add_parser("submit", help="queue a job on a running server")
    submit.add_argument("prompt", help="the user text (wrapped in the chat template)")
    follow = submit.add_mutually_exclusive_group()
    follow.add_argument("--wait", action="store_true", help="wait for the result and print it")
    follow.add_argument("--stream", action="store_true", help="print the tokens as they come")
    add_sampling_flags(submit)
    _job_flags(submit)

    jobs = sub.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus], help="only jobs in this status")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")

    for name, text in (
        ("status", "show one job"),
        ("wait", "wait for a job to end and print its text"),
        ("stream", "print a job's tokens as they come (from the start)"),
        ("cancel", "cancel a queued or running job"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id", help="the job id")
        if name == "wait":
            cmd.add_argument("--timeout", type=float, help="give up after this many seconds")

    chat = sub.add_parser("chat", help="talk with the model on a running server (one line per turn)")
    chat.add_argument("--system", help="system message (default: the server's)")
    add_sampling_flags(chat)
    chat.add_argument("--priority", type=int, choices=range(MIN_PRIORITY, MAX_PRIORITY + 1), metavar="0-9")

    for cmd in (submit, jobs, sub.choices["status"], sub.choices["wait"], sub.choices["stream"],
                sub.choices["cancel"]):  # fmt: skip
        cmd.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    for cmd in (submit, jobs, chat, *(sub.choices[n] for n in ("status", "wait", "stream", "cancel"))):
        _connection_flags(cmd)
