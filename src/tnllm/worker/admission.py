"""Which delivered job may enter this worker's engine now (no tensor code).

With preemption on, a worker runs ``slots + worker_preempt_reserve`` task threads, so a job can be
delivered while every slot is busy. Before claiming it, its task waits here, without holding a
slot, until one of:
- a slot is free (fewer jobs here than slots): claim it;
- its priority beats a job running here by ``preempt_priority_gap``: claim it, and the engine
  preempts that job within one step (its state waits in host memory, no recompute);
- the worker is shutting down: hand the message back (``Reject(requeue=True)``), also for a job
  delivered during the shutdown (a job this worker just released must run elsewhere).
Meanwhile it looks at the head of the queue (Redis, every ``QUEUE_CHECK_S``): a queued job whose
priority preempts a job here is claimed and run on this thread at once (``run_job``; its own
message, delivered later anywhere, finds it claimed and is skipped), then the wait goes on. So the
waiting job keeps its place in the queue (a message handed back to kombu goes to the back of its
list), and a higher-priority job never waits for a free task thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from tnllm.logging import job_context
from tnllm.protocol.jobs import JobStatus
from tnllm.store import keys
from tnllm.worker.job_runner import run_job
from tnllm.worker.runtime import WorkerRuntime

#: How often a waiting delivery looks for a higher-priority job in the queue (one Redis call).
QUEUE_CHECK_S = 0.1
#: How often it looks at this process's own jobs (no Redis).
LOCAL_CHECK_S = 0.02


class Admission(Enum):
    """What a delivered job should do."""

    CLAIM = "claim"
    HAND_BACK = "hand_back"


def queue_head(rt: WorkerRuntime) -> tuple[str, int] | None:
    """The first queued job and its priority, if any."""
    head = rt.store.client.zrange(keys.QUEUE, 0, 0, withscores=True)
    if not head:
        return None
    return head[0][0], 9 - int(head[0][1] // keys.PRIORITY_BAND)  # keys.queue_score


def admit(rt: WorkerRuntime, job_id: str) -> Admission:
    """Wait (holding no slot) until ``job_id`` may be claimed here, or should go back to the queue."""
    settings = rt.settings
    if rt.active.closing.is_set():  # a warm shutdown: what is delivered now runs elsewhere
        return Admission.HAND_BACK
    if not settings.preemption:
        return Admission.CLAIM
    fields = rt.store.client.hmget(keys.job(job_id), ["status", "priority"])
    if fields[0] != JobStatus.QUEUED.value:
        return Admission.CLAIM  # the claim sorts out duplicates and missing jobs
    priority = int(fields[1] or 0)
    with rt.active.waiting(job_id, priority) as first_in_line:
        return _wait(rt, job_id, priority, first_in_line)


def _wait(rt: WorkerRuntime, job_id: str, priority: int, first_in_line: Callable[[], bool]) -> Admission:
    slots = rt.running_engine().slots
    next_check = 0.0
    gap = rt.settings.preempt_priority_gap
    while True:
        jobs = rt.active.snapshot()
        room = len(jobs) < slots or any(j.priority <= priority - gap for j in jobs)
        if room and first_in_line():  # deliveries waiting here take their turns in queue order
            return Admission.CLAIM
        if rt.active.closing.is_set():
            return Admission.HAND_BACK
        now = time.monotonic()
        if now >= next_check:
            head = queue_head(rt)
            if head is not None and head[0] != job_id and any(j.priority <= head[1] - gap for j in jobs):
                with job_context(head[0]):  # it preempts a job here; this one waits on, in its place
                    run_job(rt, head[0])
            next_check = time.monotonic() + QUEUE_CHECK_S
        time.sleep(LOCAL_CHECK_S)
