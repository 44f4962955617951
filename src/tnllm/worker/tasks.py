"""Celery task adapters (registered by name from tnllm.protocol.tasks); no tensor code here.

- GENERATE_TASK(job_id): run one delivery of a job through this process's engine
  (``tnllm.worker.job_runner.run_job``: fence, generate, stream, finish), then end the task in the
  Celery state that says how the job ended, which is what Flower shows (``report``).
- ECHO_TASK(reply_key, payload): the plain Celery + Redis baseline of the queue-overhead benchmark:
  push ``payload`` onto the Redis list ``reply_key`` and return.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from celery import Task, shared_task
from celery.exceptions import Ignore
from redis.exceptions import RedisError

from tnllm.errors import JobFailed
from tnllm.protocol.tasks import ECHO_TASK, GENERATE_TASK

if TYPE_CHECKING:
    from tnllm.worker.job_runner import JobOutcome
    from tnllm.worker.runtime import WorkerRuntime

#: Seconds the echo reply list lives (the benchmark reads it at once).
ECHO_REPLY_TTL = 300


#: Outcomes (``JobOutcome`` values) of a delivery that leaves the job to another one (it runs
#: elsewhere, or went back to the queue): the task ends without a state of its own.
_ELSEWHERE = frozenset(
    {"lease_lost", "engine_lost", "skipped:queued", "skipped:running", "released:requeued",
     "released:not_owner", "paused", "skipped:paused"}
)  # fmt: skip
_CANCELLED = frozenset({"cancelled", "skipped:cancelled", "released:cancelled"})
_FAILED = frozenset({"failed", "skipped:failed"})


@shared_task(name=GENERATE_TASK, bind=True, ignore_result=True, acks_late=True, throws=(JobFailed,))
def generate(self: Task, job_id: str) -> str:
    """Run job ``job_id``; returns what happened (a ``JobOutcome`` value: ``succeeded``,
    ``skipped:succeeded``, ...) when the task ends SUCCESS (``report`` says when it does not).
    A delivery that may not enter the engine yet waits first (``worker/admission.py``)."""
    from celery.exceptions import Reject

    from tnllm.logging import job_context
    from tnllm.worker.admission import Admission, admit
    from tnllm.worker.job_runner import run_job
    from tnllm.worker.runtime import get_runtime

    with job_context(job_id):  # every log line of this job carries its id
        rt = get_runtime()
        if admit(rt, job_id) is Admission.HAND_BACK:  # a warm shutdown: it runs elsewhere
            raise Reject("the worker is shutting down", requeue=True)
        return report(self, rt, job_id, run_job(rt, job_id))


def report(task: Task, rt: WorkerRuntime, job_id: str, outcome: JobOutcome) -> str:
    """End the task in the Celery state of the job's outcome, as Flower reads it from the events.

    Cancelled: a ``task-revoked`` event, then ``Ignore`` (no result, no other event): REVOKED.
    Failed: ``JobFailed("<type>: <message>")`` (in ``throws``: logged without a traceback): FAILURE.
    Left to another delivery: ``Ignore``, so this one does not hide the state the other reaches
    (the task id is the job id). Anything else returns: SUCCESS. The message is acknowledged in
    every case, as before: the job record, never the broker, decides whether a job runs again.
    """
    value = outcome.value
    if value in _CANCELLED:
        if task.app.conf.worker_send_task_events:
            task.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore()
    if value in _ELSEWHERE:
        raise Ignore()
    if value in _FAILED:
        raise JobFailed(_error_text(rt, job_id))
    return value


def _error_text(rt: WorkerRuntime, job_id: str) -> str:
    """``"<type>: <message>"`` of the job's recorded error (``"failed"`` if it cannot be read)."""
    record = None
    with contextlib.suppress(RedisError, OSError):  # the failure is recorded; this is only its label
        record = rt.store.get(job_id)
    error = record.error if record is not None else None
    return f"{error.type}: {error.message}" if error is not None else "failed"


@shared_task(name=ECHO_TASK, ignore_result=True, acks_late=True)
def echo(reply_key: str, payload: str) -> None:
    """Push ``payload`` to ``reply_key`` (the benchmark's baseline: one message, one Redis write)."""
    from tnllm.worker.runtime import get_runtime

    client = get_runtime().store.client
    pipe = client.pipeline(transaction=False)
    pipe.rpush(reply_key, payload)
    pipe.expire(reply_key, ECHO_REPLY_TTL)
    pipe.execute()
