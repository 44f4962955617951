"""The schedule pump: moves due deliveries from the Redis schedule onto the ``webhooks`` Celery queue.

Runs as a thread in every webhook worker process (several pumps are safe: claiming is one atomic
script). Retries wait in the schedule, not in Celery countdown/ETA messages, so a killed worker holds
nothing that only its memory knew: whatever it had dispatched or was attempting comes due again when
its lease runs out, and any webhook worker picks it up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from tnllm.store.webhooks import WAKE_KEY, WebhookStore, now_ms

log = logging.getLogger(__name__)

#: longest sleep between schedule looks; new events wake the pump at once through WAKE_KEY
MAX_IDLE_S = 1.0
#: deliveries claimed per look
BATCH = 100
#: pause while the queue is at its backlog cap (workers are busy; nothing to gain from looking)
THROTTLE_S = 0.05


class SchedulePump:
    """Claims due deliveries and hands each to ``dispatch(member, token)`` (``send_task``)."""

    def __init__(
        self,
        store: WebhookStore,
        dispatch: Callable[[str, int], object],
        dispatch_lease_ms: int,
        backlog: Callable[[], int] | None = None,
        max_backlog: int = 1000,
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.dispatch_lease_ms = dispatch_lease_ms
        self.backlog = backlog
        self.max_backlog = max_backlog
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: True when the last look dispatched nothing because the queue was full
        self.throttled = False

    def start(self) -> SchedulePump:
        self._thread = threading.Thread(target=self._run, name="webhook-pump", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pump_once(self) -> int:
        """Dispatch every due delivery (up to the backlog cap); how many were dispatched."""
        room = BATCH
        if self.backlog is not None:
            # a long queue would only re-dispatch what is already waiting once its lease ran out
            room = min(room, max(0, self.max_backlog - self.backlog()))
        self.throttled = room == 0
        if room == 0:
            return 0
        claimed = self.store.claim_due(self.dispatch_lease_ms, room)
        for value, token in claimed:
            self.dispatch(value, token)
        return len(claimed)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.pump_once() >= BATCH:
                    continue
                if self.throttled:
                    self._stop.wait(THROTTLE_S)
                    continue
                self._sleep()
            except redis.RedisError as exc:
                log.warning("webhook pump: Redis unavailable (%s); retrying", exc)
                self._stop.wait(MAX_IDLE_S)
            except Exception:  # keep pumping: a dead pump would strand every delivery
                log.exception("webhook pump: dispatch failed; retrying")
                self._stop.wait(MAX_IDLE_S)

    def _sleep(self) -> None:
        due = self.store.next_due_ms()
        wait = MAX_IDLE_S if due is None else min(MAX_IDLE_S, max(0.0, (due - now_ms()) / 1000))
        if wait > 0.01:
            # BLPOP returns early when an event is enqueued (the enqueue script pushes WAKE_KEY)
            self.store.redis.blpop([WAKE_KEY], timeout=wait)
