"""Test-only fault injection, honoured only when ``Settings.debug_faults`` is on (off by default).

A job's ``metadata.tnllm_debug`` object may ask its worker to:
- ``"crash": true`` — SIGKILL the worker process right after claiming the job (an OOM kill or
  node loss), every time it runs: the reaper's attempt limit must then fail it with `worker_lost`;
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
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

KEY = "tnllm_debug"


@dataclass(frozen=True)
class Faults:
    """The faults one job asked for."""

    crash: bool = False
    delay: float = 0.0


def faults_for(metadata: dict[str, Any], enabled: bool) -> Faults:
    """Parse ``metadata.tnllm_debug`` when fault injection is enabled, else no faults."""
    spec = metadata.get(KEY) if enabled else None
    if not isinstance(spec, dict):
        return Faults()
    delay, until = spec.get("delay", 0.0), spec.get("until", 0.0)
    held = float(delay) if isinstance(delay, int | float) else 0.0
    if isinstance(until, int | float):
        held = max(held, float(until) - time.time())
    return Faults(crash=bool(spec.get("crash")), delay=held)


def crash_now(job_id: str) -> None:
    """Kill this worker process the way the OOM killer would (no cleanup, no ack)."""
    log.warning("debug fault: job %s kills its worker (pid %s)", job_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
