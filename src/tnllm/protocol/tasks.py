"""Names and messages shared by the API (producer) and the workers (consumers).

Imports pydantic only: the API imports this module and must stay torch-free.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

#: Celery task that runs one job; its only argument is the job id (the Redis record is the truth).
GENERATE_TASK = "tnllm.generate"
#: Celery task that delivers one webhook event of a job.
WEBHOOK_TASK = "tnllm.webhook.deliver"
#: Trivial task used by the queue-overhead benchmark as the plain Celery baseline.
ECHO_TASK = "tnllm.echo"

GENERATE_QUEUE = "generate"
WEBHOOK_QUEUE = "webhooks"
#: Prefix of each GPU worker's own queue (``worker_queue``).
WORKER_QUEUE_PREFIX = GENERATE_QUEUE + ".w."


def worker_queue(worker_id: str) -> str:
    """The queue only ``worker_id`` consumes: jobs that continue a state its engine holds."""
    return WORKER_QUEUE_PREFIX + hashlib.sha256(worker_id.encode()).hexdigest()[:16]


#: Job priorities accepted by the API (higher runs first).
MIN_PRIORITY = 0
MAX_PRIORITY = 9


class GenerateMessage(BaseModel):
    """Body of a GENERATE_TASK message."""

    job_id: str


#: kombu's Redis transport keeps one list per priority step and pops LOWER numbers first; with every
#: step listed, each of the ten job priorities gets its own list. Producer and workers must agree.
BROKER_PRIORITY_STEPS = list(range(MAX_PRIORITY + 1))


def broker_priority(priority: int) -> int:
    """Celery message priority for a job priority (job: higher runs first; Redis broker: lower)."""
    return MAX_PRIORITY - max(MIN_PRIORITY, min(MAX_PRIORITY, priority))
