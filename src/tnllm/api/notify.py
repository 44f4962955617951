"""One pub/sub subscription per API process wakes every request waiting for a job to finish.

Workers publish the job id on ``tnllm:events:finished`` in the same script that writes the terminal
record. Waiters register before reading the record, so no finish is missed; after a Redis reconnect
every waiter is woken to re-read (a notification may have been lost while disconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tnllm.store import AsyncJobStore, JobRecord
from tnllm.store.keys import FINISHED_CHANNEL

log = logging.getLogger(__name__)

#: Waiters re-read the record at least this often, a safety net under the notifications.
RECHECK_S = 5.0


class FinishWatcher:
    """Background listener on ``tnllm:events:finished`` that sets per-job asyncio events."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start listening (call from the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="tnllm-finish-watcher")

    async def stop(self) -> None:
        """Stop listening and wake everyone."""
        self._stopping = True
        task = self._task
        # Cancel until it sticks: on Python 3.11 a cancel that races redis-py's read timeout can be
        # turned into a TimeoutError and swallowed.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        self._wake_all()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``job_id`` may have finished (register before reading the record)."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(FINISHED_CHANNEL)
                self._wake_all()  # anything finished while we were not listening
                backoff = 0.2
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._wake(str(message["data"]))
            except (RedisError, OSError) as exc:
                log.debug("finish watcher lost Redis (%s); reconnecting", exc)
                self._wake_all()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def wait_for_terminal(
    store: AsyncJobStore,
    watcher: FinishWatcher,
    job_id: str,
    timeout: float,
    read: Callable[[str], Awaitable[JobRecord | None]] | None = None,
) -> JobRecord | None:
    """The job record once terminal, or as it is after ``timeout`` seconds (None if unknown).

    ``read`` (default ``store.get``) reads the record, first right after the watch is registered:
    a caller's own first read (an ownership check) can be that one instead of one more round trip.
    """
    deadline = time.monotonic() + timeout
    read = read or store.get
    with watcher.watch(job_id) as event:
        while True:
            record = await read(job_id)
            remaining = deadline - time.monotonic()
            if record is None or record.terminal or remaining <= 0:
                return record
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, RECHECK_S))
            event.clear()
