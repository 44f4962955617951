"""The ``tnllm`` console script: one subcommand per job, each implemented in its own module.

Subcommand modules are imported only when chosen, so ``tnllm api`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tnllm

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
}


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="demo | local checkpoint folder | ModelScope id (default: TNLLM_MODEL)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="tnllm", description="TransNormerLLM generation service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {tnllm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis (embedded if no URL), worker(s), API and Flower")
    _model_arg(up)
    up.add_argument("--port", type=int, help="API port (default 8000)")
    up.add_argument("--flower-port", type=int, help="Flower port (default 5555)")
    up.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    up.add_argument("--workers", type=int, help="GPU worker processes (default 1)")

    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)

    worker = sub.add_parser("worker", help="run one GPU worker process (Celery)")
    _model_arg(worker)
    worker.add_argument("--concurrency", type=int, help="tasks at once (default: engine slots)")
    worker.add_argument("--hostname", help="Celery node name")

    hook = sub.add_parser("webhook-worker", help="run the CPU worker that delivers webhooks")
    hook.add_argument("--hostname", help="Celery node name (default webhooks@%%h; %%h = this host)")
    fl = sub.add_parser("flower", help="run the Flower dashboard")
    fl.add_argument("--port", type=int)
    rd = sub.add_parser("redis", help="run the embedded Redis server in the foreground")
    rd.add_argument("--port", type=int, default=6379)

    dl = sub.add_parser("download", help="download a checkpoint from ModelScope and print its path")
    dl.add_argument("model_id", nargs="?", default=None, help="default: OpenNLPLab/TransNormerLLM-7B")
    dl.add_argument("--dir", help="target folder (default: <data_dir>/models/<MODEL_ID>)")
    dl.add_argument("--revision")

    demo = sub.add_parser("demo-model", help="write a random-weight checkpoint in the official format")
    demo.add_argument("dir")
    demo.add_argument("--size", choices=["tiny", "small"], default="tiny")
    demo.add_argument("--seed", type=int, default=0)

    _generate_parser(sub)
    return parser


def _generate_parser(sub: Any) -> None:
    """``tnllm generate``: the sampling flags come from the one ``SamplingParams`` contract (names,
    help), and an absent flag means the contract's default."""
    from tnllm.protocol.sampling import SamplingParams

    gen = sub.add_parser("generate", help="offline generation through the engine, without the queue")
    _model_arg(gen)
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="text prompt (repeatable)")
    src.add_argument("--prompt-ids", action="append", help="comma-separated token ids (repeatable)")
    for name, field in SamplingParams.model_fields.items():
        flag, text = "--" + name.replace("_", "-"), field.description
        if name == "stop":
            gen.add_argument(flag, action="append", help=f"{text} Repeatable.")
        elif field.annotation is bool:
            gen.add_argument(flag, action="store_true", default=None, help=text)
        elif field.annotation not in (int, float, int | None, float | None):
            gen.add_argument(flag, type=json.loads, default=None, help=f"{text} (JSON)")
        else:
            number = float if field.annotation is float else int
            gen.add_argument(flag, type=number, default=None, help=text)
    gen.add_argument("--raw", action="store_true", help="no chat template around --prompt")
    gen.add_argument("--device", help="cpu | cuda | cuda:N (default: TNLLM_DEVICE)")
    gen.add_argument("--dtype", help="float32 | bfloat16 (default: TNLLM_DTYPE)")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")


def _resolve(target: str) -> Callable[[Any, argparse.Namespace], int]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tnllm`` command."""
    from tnllm.config import Settings

    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("model",) if getattr(args, k, None) is not None}
    settings = Settings(**overrides)
    return int(_resolve(HANDLERS[args.command])(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
