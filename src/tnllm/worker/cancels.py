"""Cancel requests pushed to the worker: the engine hears of a cancel the moment Redis records it.

The CANCEL script publishes the job id on ``tnllm:events:cancel`` in the same atomic step that sets
``cancel_requested``. Every worker process keeps one subscription to that channel on a thread of
its own; a job that runs here is asked to stop at once (``ActiveJob.request_cancel``: the engine
request is cancelled and leaves the batch at the start of the engine's next step). Pub/sub
delivers only to connected subscribers, so a cancel published while this worker was disconnected
is still caught by the stream pump's and the heartbeat's reads of ``cancel_requested``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from tnllm.store import keys
from tnllm.worker.active import ActiveJobs

log = logging.getLogger(__name__)

#: How long one wait for a message lasts (the thread looks at its stop flag in between).
POLL_S = 1.0
#: Pause before subscribing again after the connection failed.
RETRY_S = 1.0


class CancelListener:
    """One thread per worker process: cancel messages → ``request_cancel`` of the job running here."""

    def __init__(self, client: Any, active: ActiveJobs) -> None:
        self.client = client
        self.active = active
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscribed = threading.Event()  # set while subscribed (tests wait on it)

    def start(self) -> None:
        """Listen on a daemon thread until ``stop()``."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tnllm-cancels", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def handle(self, job_id: str) -> bool:
        """A cancel was published for ``job_id``: stop it if it runs here. True if it did."""
        job = self.active.get(job_id)
        if job is None:
            return False
        log.info("job %s: cancel pushed; stopping its generation", job_id)
        job.request_cancel()
        return True

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.CANCEL_CHANNEL)
                self.subscribed.set()
                failing = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_S)
                    if message is not None and message.get("type") == "message":
                        self.handle(str(message["data"]))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not failing:
                    log.warning("cancel listener: Redis unavailable (%s); subscribing again", exc)
                failing = True
                self._stop.wait(RETRY_S)
            except Exception:  # never let one bad message end the pushes for good
                log.exception("cancel listener failed; subscribing again")
                self._stop.wait(RETRY_S)
            finally:
                self.subscribed.clear()
                pubsub.close()
