"""The API's Celery producer: sends ``GENERATE_TASK`` messages by name (no worker code imported).

It uses the workers' own app configuration (``tnllm.protocol.celery.make_celery``: JSON only, the same
priority lists and separator) and the one ``send_generate``, so the broker lists the API fills are
the ones workers pop and its messages are the workers' own. Sending is blocking
network I/O, so async code calls it through a worker thread.
"""

from __future__ import annotations

import anyio
from celery import Celery

from tnllm.config import Settings
from tnllm.protocol.celery import make_celery, send_generate
from tnllm.protocol.tasks import GENERATE_QUEUE


def make_producer(settings: Settings) -> Celery:
    """The workers' Celery app, tuned to publish fast-or-fail (a request answers 503, not hang)."""
    app = make_celery(settings)
    app.conf.update(
        broker_connection_timeout=3,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )
    return app


class JobProducer:
    """Publishes one Celery message per job run."""

    def __init__(self, settings: Settings) -> None:
        self.celery = make_producer(settings)

    def send_generate_blocking(
        self, job_id: str, priority: int, prompt_tokens: int | None = None, queue: str = GENERATE_QUEUE
    ) -> None:
        """Enqueue ``GENERATE_TASK(job_id)`` (``protocol.celery.send_generate``); raises on broker errors."""
        send_generate(self.celery, job_id, priority, prompt_tokens, queue)

    async def send_generate(
        self, job_id: str, priority: int, prompt_tokens: int | None = None, queue: str = GENERATE_QUEUE
    ) -> None:
        """``send_generate_blocking`` in a worker thread (kombu's client is synchronous)."""
        await anyio.to_thread.run_sync(self.send_generate_blocking, job_id, priority, prompt_tokens, queue)

    def close(self) -> None:
        """Release the broker connections."""
        self.celery.close()
