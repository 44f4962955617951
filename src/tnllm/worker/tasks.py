"""Celery task adapters (registered by name from tnllm.protocol.tasks); no tensor code here.

- GENERATE_TASK(job_id): run one delivery of a job through this process's engine
  (``tnllm.worker.job_runner.run_job``: fence, generate, stream, finish).
- ECHO_TASK(reply_key, payload): the plain Celery + Redis baseline of the queue-overhead benchmark:
  push ``payload`` onto the Redis list ``reply_key`` and return.
"""

from __future__ import annotations

from celery import shared_task

from tnllm.protocol.tasks import ECHO_TASK, GENERATE_TASK

#: Seconds the echo reply list lives (the benchmark reads it at once).
ECHO_REPLY_TTL = 300


@shared_task(name=GENERATE_TASK, ignore_result=True, acks_late=True)
def generate(job_id: str) -> str:
    """Run job ``job_id``; returns what happened (a ``JobOutcome`` value: ``succeeded``,
    ``skipped:running``, ...), as a plain string for Celery's log line and JSON."""
    from celery.exceptions import Reject

    from tnllm.logging import job_context
    from tnllm.worker.admission import Admission, admit
    from tnllm.worker.job_runner import run_job
    from tnllm.worker.runtime import get_runtime

    with job_context(job_id):  # every log line of this job carries its id
        rt = get_runtime()
        if admit(rt, job_id) is Admission.HAND_BACK:  # to the head of its list: it keeps its place
            raise Reject("a higher-priority job is queued", requeue=True)
        return run_job(rt, job_id).value


@shared_task(name=ECHO_TASK, ignore_result=True, acks_late=True)
def echo(reply_key: str, payload: str) -> None:
    """Push ``payload`` to ``reply_key`` (the benchmark's baseline: one message, one Redis write)."""
    from tnllm.worker.runtime import get_runtime

    client = get_runtime().store.client
    pipe = client.pipeline(transaction=False)
    pipe.rpush(reply_key, payload)
    pipe.expire(reply_key, ECHO_REPLY_TTL)
    pipe.execute()
