"""``tnllm download`` and ``tnllm demo-model``: the commands over the model room's checkpoint library.

Both print the checkpoint folder on success (so ``$(tnllm download)`` works in a script) and one
``tnllm <command>: error: ...`` line on stderr when they fail.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tnllm.cli.hints import model_error
from tnllm.config import DEFAULT_MODEL, Settings, is_model_id
from tnllm.errors import ModelResolutionError
from tnllm.model.demo import write_demo_checkpoint
from tnllm.model.download import download_model, model_dir_for

log = logging.getLogger(__name__)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever ``sys.stderr`` is when a record comes."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def say_model_steps(prefix: str) -> None:
    """Show the model room's steps (``downloading X into Y``, ``writing the demo checkpoint``) on
    stderr, where ModelScope's progress bars follow; idempotent, nothing else of logging changes."""
    steps = logging.getLogger("tnllm.model.download")
    if not any(isinstance(h, _Stderr) for h in steps.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
        steps.addHandler(handler)
    steps.setLevel(logging.INFO)


def cmd_download(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm download [MODEL_ID] [--dir DIR] [--revision REV]``: fetch a checkpoint, print its folder."""
    model_id = args.model_id or (settings.model if is_model_id(str(settings.model)) else DEFAULT_MODEL)
    revision = args.revision or settings.model_revision
    try:
        target = Path(args.dir) if args.dir else model_dir_for(model_id, settings.data_dir)
        if not is_model_id(model_id):
            raise ModelResolutionError(f"{model_id!r} is not a ModelScope model id (owner/name)")
        say_model_steps("tnllm download: ")
        folder = download_model(model_id, target, revision)
    except ModelResolutionError as exc:
        print(f"tnllm download: error: {model_error(exc, 'download')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tnllm download: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(folder.resolve())
    return 0


def cmd_demo_model(settings: Settings, args: argparse.Namespace) -> int:
    """``tnllm demo-model DIR [--size tiny|small] [--seed N]``: write a demo checkpoint, print its path."""
    start = time.perf_counter()
    try:
        out = write_demo_checkpoint(args.dir, size=args.size, seed=args.seed)
    except (OSError, ValueError) as exc:
        print(f"tnllm demo-model: error: {exc}", file=sys.stderr)
        return 1
    log.info("wrote %s demo checkpoint in %.1fs", args.size, time.perf_counter() - start)
    print(out.resolve())
    return 0
