"""The API's Celery producer: sends ``GENERATE_TASK`` messages by name (no worker code imported).

JSON only; the job priority becomes the broker priority (``worker.protocol.broker_priority``). Sending
is blocking network I/O, so async code calls ``send_generate`` through a worker thread.
"""

from __future__ import annotations

import anyio
from celery import Celery

from infra.flower import task_display
from infra.settings import Settings
from worker.protocol import (
    BROKER_PRIORITY_STEPS,
    GENERATE_QUEUE,
    GENERATE_TASK,
    broker_priority,
)


def make_producer(settings: Settings) -> Celery:
    """A Celery app configured only for publishing to the Redis broker at ``settings.redis_url``."""
    app = Celery("tnllm-api", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=False,
        # Fail fast while Redis is down: the request answers 503 instead of hanging.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        broker_transport_options={
            "priority_steps": BROKER_PRIORITY_STEPS,
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.visibility_timeout,
        },
    )
    return app


class JobProducer:
    """Publishes one Celery message per job run."""

    def __init__(self, settings: Settings) -> None:
        self.celery = make_producer(settings)

    def send_generate_blocking(self, job_id: str, priority: int, prompt_tokens: int | None = None) -> None:
        """Enqueue ``GENERATE_TASK(job_id)``; raises on broker errors."""
        self.celery.send_task(
            GENERATE_TASK,
            args=[job_id],
            queue=GENERATE_QUEUE,
            routing_key=GENERATE_QUEUE,
            priority=broker_priority(priority),
            task_id=job_id,
            **task_display(job_id, prompt_tokens, priority),
        )

    async def send_generate(self, job_id: str, priority: int, prompt_tokens: int | None = None) -> None:
        """``send_generate_blocking`` in a worker thread (kombu's client is synchronous)."""
        await anyio.to_thread.run_sync(self.send_generate_blocking, job_id, priority, prompt_tokens)

    def close(self) -> None:
        """Release the broker connections."""
        self.celery.close()
