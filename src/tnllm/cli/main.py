"""The ``tnllm`` console script: one subcommand per job, each implemented in its own module.

Subcommand modules are imported only when chosen, so ``tnllm api`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import tnllm
from tnllm.cli.flags import add_client_parsers, add_sampling_flags

# subcommand -> "module:function"; the function takes (settings, args) and returns an exit code.
HANDLERS: dict[str, str] = {
    "up": "tnllm.cli.launcher:cmd_up",
    "api": "tnllm.cli.launcher:cmd_api",
    "worker": "tnllm.cli.launcher:cmd_worker",
    "webhook-worker": "tnllm.cli.launcher:cmd_webhook_worker",
    "flower": "tnllm.cli.launcher:cmd_flower",
    "redis": "tnllm.cli.launcher:cmd_redis",
    "download": "tnllm.cli.model_cmds:cmd_download",
    "demo-model": "tnllm.cli.model_cmds:cmd_demo_model",
    "generate": "tnllm.cli.generate:cmd_generate",
    "submit": "tnllm.cli.client_cmds:cmd_submit",
    "jobs": "tnllm.cli.client_cmds:cmd_jobs",
    "status": "tnllm.cli.client_cmds:cmd_status",
    "wait": "tnllm.cli.client_cmds:cmd_wait",
    "stream": "tnllm.cli.client_cmds:cmd_stream",
    "cancel": "tnllm.cli.client_cmds:cmd_cancel",
    "chat": "tnllm.cli.chat:cmd_chat",
}
#: Settings a flag of the same name overrides (``--model``, ``--url``, ``--api-key``).
OVERRIDES = ("model", "url", "api_key")


class Parser(argparse.ArgumentParser):
    """argparse with a mistake told in one line (``tnllm submit: error: ...``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="demo | local checkpoint folder | ModelScope id (default: TNLLM_MODEL)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = Parser(prog="tnllm", description="TransNormerLLM generation service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {tnllm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis (embedded if no URL), worker(s), API and Flower")
    _model_arg(up)
    up.add_argument("--port", type=int, help="API port (default 8000)")
    up.add_argument("--flower-port", type=int, help="Flower port (default 5555)")
    up.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    up.add_argument("--workers", type=int, help="GPU worker processes (default 1)")
    up.add_argument("--from-make", action="store_true", help=argparse.SUPPRESS)  # hints say `make run`

    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", help="bind address (default: TNLLM_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default: TNLLM_PORT, 8000)")

    worker = sub.add_parser("worker", help="run one GPU worker process (Celery)")
    _model_arg(worker)
    worker.add_argument("--concurrency", type=int, help="tasks at once (default: engine slots)")
    worker.add_argument("--hostname", help="Celery node name")

    hook = sub.add_parser("webhook-worker", help="run the CPU worker that delivers webhooks")
    hook.add_argument("--hostname", help="Celery node name (default webhooks@%%h; %%h = this host)")
    fl = sub.add_parser("flower", help="run the Flower dashboard")
    fl.add_argument("--port", type=int, help="port (default: TNLLM_FLOWER_PORT, 5555)")
    rd = sub.add_parser("redis", help="run the embedded Redis server in the foreground")
    rd.add_argument("--port", type=int, default=6379, help="port (default 6379)")

    dl = sub.add_parser("download", help="download a checkpoint from ModelScope and print its path")
    dl.add_argument("model_id", nargs="?", default=None, help="default: OpenNLPLab/TransNormerLLM-7B")
    dl.add_argument("--dir", help="target folder (default: <data_dir>/models/<MODEL_ID>)")
    dl.add_argument("--revision", help="ModelScope revision (default: TNLLM_MODEL_REVISION, else latest)")

    demo = sub.add_parser("demo-model", help="write a random-weight checkpoint in the official format")
    demo.add_argument("dir", help="folder to write (created)")
    demo.add_argument("--size", choices=["tiny", "small"], default="tiny", help="model size (default tiny)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")

    _generate_parser(sub)
    add_client_parsers(sub)
    return parser


def _generate_parser(sub: Any) -> None:
    """``tnllm generate``: the sampling flags come from the one ``SamplingParams`` contract (names,
    help), and an absent flag means the contract's default."""
    gen = sub.add_parser("generate", help="offline generation through the engine, without the queue")
    _model_arg(gen)
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="text prompt (repeatable)")
    src.add_argument("--prompt-ids", action="append", help="comma-separated token ids (repeatable)")
    add_sampling_flags(gen)
    gen.add_argument("--raw", action="store_true", help="no chat template around --prompt")
    gen.add_argument("--device", help="cpu | cuda | cuda:N (default: TNLLM_DEVICE)")
    gen.add_argument("--dtype", help="float32 | bfloat16 (default: TNLLM_DTYPE)")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")


def _resolve(target: str) -> Callable[[Any, argparse.Namespace], int]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tnllm`` command."""
    from pydantic import ValidationError

    from tnllm.config import Settings

    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # a bad TNLLM_* variable: name it, in one line
        err = exc.errors()[0]
        name = "TNLLM_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
        print(f"tnllm {args.command}: {name}: {err['msg']}", file=sys.stderr)
        return 2
    return int(_resolve(HANDLERS[args.command])(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
