"""Which delivered job may enter this worker's engine now (no tensor code).

With preemption on, a worker runs ``slots + worker_preempt_reserve`` task threads, so a job can be
delivered while every slot is busy. Before claiming it, its task waits here, without holding a
slot, until one of:
- a slot is free (fewer jobs here than slots): claim it;
- its priority beats a job running here by ``preempt_priority_gap``: claim it, and the engine
  preempts that job within one step (its state waits in host memory, no recompute);
- a job of higher priority is queued (checked in Redis every ``QUEUE_CHECK_S``), or the worker is
  shutting down: hand the message back to the head of its broker list (``Reject(requeue=True)``),
  so the reserve thread is free for that job and this one keeps its place in the queue.
"""

from __future__ import annotations

import time
from enum import Enum

from tnllm.protocol.jobs import JobStatus
from tnllm.store import keys
from tnllm.worker.runtime import WorkerRuntime

#: How often a waiting delivery looks for a higher-priority job in the queue (one Redis call).
QUEUE_CHECK_S = 0.25
#: How often it looks at this process's own jobs (no Redis).
LOCAL_CHECK_S = 0.02


class Admission(Enum):
    """What a delivered job should do."""

    CLAIM = "claim"
    HAND_BACK = "hand_back"


def head_priority(rt: WorkerRuntime, job_id: str) -> int | None:
    """The priority of the first queued job other than ``job_id`` that ranks above it, if any."""
    head = rt.store.client.zrange(keys.QUEUE, 0, 0, withscores=True)
    if not head or head[0][0] == job_id:
        return None
    return 9 - int(head[0][1] // keys.PRIORITY_BAND)  # keys.queue_score


def admit(rt: WorkerRuntime, job_id: str) -> Admission:
    """Wait (holding no slot) until ``job_id`` may be claimed here, or should go back to the queue."""
    settings = rt.settings
    if not settings.preemption:
        return Admission.CLAIM
    fields = rt.store.client.hmget(keys.job(job_id), ["status", "priority"])
    if fields[0] != JobStatus.QUEUED.value:
        return Admission.CLAIM  # the claim sorts out duplicates and missing jobs
    priority = int(fields[1] or 0)
    slots = rt.running_engine().slots
    next_check = 0.0
    while True:
        jobs = rt.active.snapshot()
        if len(jobs) < slots:
            return Admission.CLAIM
        if any(j.priority <= priority - settings.preempt_priority_gap for j in jobs):
            return Admission.CLAIM
        if rt.active.closing.is_set():
            return Admission.HAND_BACK
        now = time.monotonic()
        if now >= next_check:
            ahead = head_priority(rt, job_id)
            if ahead is not None and ahead > priority:
                return Admission.HAND_BACK
            next_check = now + QUEUE_CHECK_S
        time.sleep(LOCAL_CHECK_S)
