"""Test-only fault injection, honoured only when ``Settings.debug_faults`` is on (off by default).

A job's ``metadata.tnllm_debug`` object may ask its worker to:
- ``"crash": true`` — SIGKILL the worker process right after claiming the job (an OOM kill or
  node loss), every time it runs: the reaper's attempt limit must then fail it with `worker_lost`;
- ``"crash_after_tokens": n`` — on the job's first attempt, SIGKILL the worker once the job's n-th
  token is in its stream (mid-generation: the next attempt resumes from the stream);
- ``"delay": seconds`` — hold the claimed job as running this long before generating (a slow job,
  used to keep a worker busy and to hit the time limit; a cancel during the hold is honoured);
- ``"until": epoch seconds`` — the same hold, up to this wall-clock time: a later run of the job
  (after a requeue) is held only for what is left of it.
With ``debug_faults`` off the metadata is ignored and echoed back like any other.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tnllm.engine.types import TokenEvent
from tnllm.worker.deltas import DeltaWriter

log = logging.getLogger(__name__)

KEY = "tnllm_debug"


@dataclass(frozen=True)
class Faults:
    """The faults one job asked for."""

    crash: bool = False
    delay: float = 0.0
    crash_after_tokens: int = 0


def faults_for(metadata: dict[str, Any], enabled: bool) -> Faults:
    """Parse ``metadata.tnllm_debug`` when fault injection is enabled, else no faults."""
    spec = metadata.get(KEY) if enabled else None
    if not isinstance(spec, dict):
        return Faults()
    delay, until = spec.get("delay", 0.0), spec.get("until", 0.0)
    held = float(delay) if isinstance(delay, int | float) else 0.0
    if isinstance(until, int | float):
        held = max(held, float(until) - time.time())
    after = spec.get("crash_after_tokens", 0)
    return Faults(
        crash=bool(spec.get("crash")),
        delay=held,
        crash_after_tokens=after if isinstance(after, int) else 0,
    )


def crash_after(job_id: str, writer: DeltaWriter, n: int) -> Callable[[TokenEvent], None]:
    """``writer.on_token``, killing the worker once token ``n`` is written. It writes from the
    callback's thread first: a debug fault only."""
    seen = 0

    def on_token(event: TokenEvent) -> None:
        nonlocal seen
        writer.on_token(event)
        before, seen = seen, seen + len(event.token_ids)
        if before < n <= seen:
            writer.flush()
            crash_now(job_id)

    return on_token


def crash_now(job_id: str) -> None:
    """Kill this worker process the way the OOM killer would (no cleanup, no ack)."""
    log.warning("debug fault: job %s kills its worker (pid %s)", job_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
