"""Pause and resume: the scripts' arguments and answers (PAUSE and RESUME for the API, PARK for
the worker that takes a running job out of its slot). Transitions (docs/STATE.md):

    queued --pause--> paused --resume--> queued          (the API sends a new Celery message)
    running --pause--> running + pause_requested --(worker: PARK)--> paused
    running + pause_requested --resume--> running        (the request is withdrawn)
    paused --cancel--> cancelled
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tnllm.protocol.jobs import JobStatus
from tnllm.store import keys
from tnllm.store.ops import ScriptCall


class PauseKind(StrEnum):
    """What ``pause`` or ``resume`` did (the scripts' first word)."""

    PAUSED = "paused"  # pause: now paused (was queued, or already paused)
    REQUESTED = "requested"  # pause: running; its worker parks it within one stream round
    QUEUED = "queued"  # resume: back in the queue at its old place
    RUNNING = "running"  # resume: a pending pause request was withdrawn
    NOT_PAUSED = "not_paused"  # resume: nothing to resume
    TERMINAL = "terminal"  # pause: already finished
    MISSING = "missing"


@dataclass(frozen=True)
class PauseOutcome:
    """What the call did and the status it found."""

    kind: PauseKind
    status: JobStatus | None


def pause_call(job_id: str) -> ScriptCall:
    """Arguments of PAUSE."""
    return ScriptCall("pause", [keys.job(job_id), keys.QUEUE], [job_id])


def resume_call(job_id: str, ttl: int) -> ScriptCall:
    """Arguments of RESUME."""
    return ScriptCall("resume", [keys.job(job_id), keys.QUEUE], [job_id, ttl])


def parse(raw: Sequence[str]) -> PauseOutcome:
    """Decode a PAUSE or RESUME answer."""
    return PauseOutcome(PauseKind(raw[0]), JobStatus(raw[1]) if raw[1] else None)


def park_call(job_id: str, worker_id: str, ttl: int, now: float) -> ScriptCall:
    """Arguments of PARK (answered like RELEASE, plus ``paused``)."""
    job_keys = [keys.job(job_id), keys.lease(job_id), keys.QUEUE, keys.RUNNING, keys.stream(job_id)]
    return ScriptCall("park", job_keys, [job_id, repr(now), ttl, keys.FINISHED_CHANNEL, worker_id])
