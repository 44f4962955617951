"""The API's Celery producer: sends ``GENERATE_TASK`` messages by name (no worker code imported).

It uses the workers' own app configuration (``tnllm.protocol.celery.make_celery``: JSON only, the same
priority lists and separator) and the one ``send_generate``, so the broker lists the API fills are
the ones workers pop and its messages are the workers' own. Sending is blocking
network I/O, so async code calls it through a worker thread.

The fast path sends nothing itself: ``broker_commands`` has Celery and kombu build the Redis
commands of a publish (no I/O), and the job store's CREATE runs them with the record, one round
trip and one atomic step for both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
from celery import Celery

from tnllm.config import Settings
from tnllm.protocol.celery import BrokerCommand, generate_commands, make_celery, send_generate
from tnllm.protocol.tasks import GENERATE_QUEUE

log = logging.getLogger(__name__)


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
        # A kombu producer held for ``broker_commands``, used by the event loop's thread only.
        self._builder: Any = None
        self._unsupported = False
        self._prepare_lock = asyncio.Lock()

    def _prepare_blocking(self) -> Any:
        producer = self.celery.producer_pool.acquire(block=True)
        try:  # the first build declares the queue (Redis I/O, once per connection)
            generate_commands(self.celery, producer, "tnllm-warmup", 0, declare=True)
        except BaseException:
            producer.release()
            raise
        return producer

    async def broker_commands(
        self, job_id: str, priority: int, prompt_tokens: int | None = None, queue: str = GENERATE_QUEUE
    ) -> list[BrokerCommand] | None:
        """The commands publishing ``GENERATE_TASK(job_id)`` for the store's CREATE to run, or None
        when the broker cannot take them that way (then ``send_generate`` after the create). Only
        for the shared queue: a worker's own queue (a continuation) may need declaring, which is
        I/O, so those go the old way."""
        if queue != GENERATE_QUEUE:
            return None
        if self._builder is None and not self._unsupported:
            async with self._prepare_lock:
                if self._builder is None and not self._unsupported:
                    try:
                        self._builder = await anyio.to_thread.run_sync(self._prepare_blocking)
                    except ValueError as exc:
                        log.info("publishing with separate broker commands: %s", exc)
                        self._unsupported = True
                    except Exception as exc:  # broker unreachable: this request sends the old way
                        log.debug("broker not ready for one-step publishing (%s)", exc)
        if self._builder is None:
            return None
        return generate_commands(self.celery, self._builder, job_id, priority, prompt_tokens)

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
        if self._builder is not None:
            self._builder.release()
            self._builder = None
        self.celery.close()
