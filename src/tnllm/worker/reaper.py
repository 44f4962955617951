"""The reaper: jobs whose worker died go back on the queue, or fail with ``worker_lost``.

Every worker runs a round every ``reaper_interval``; a short Redis lock (SET NX PX) lets one worker
act per round. A running job whose lease expired is requeued (a new Celery message is sent) or, after
``max_attempts``, failed; one whose cancel was requested is cancelled. Then the messages that a dead
worker had received but not started are sent again (``tnllm/worker/orphans.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tnllm.config import Settings
from tnllm.store.sync import JobStore
from tnllm.worker.events import notify_transition
from tnllm.worker.orphans import rescue_orphans, resend_messageless

log = logging.getLogger(__name__)

#: Redis key held (SET NX PX) by the worker whose reaper acts this round.
REAPER_LOCK = "tnllm:reaper:lock"

#: Sends a new Celery message for (job_id, priority).
SendGenerate = Callable[[str, int], None]


class Reaper:
    """One worker's share of the reaping: ``reap_once`` every ``reaper_interval``."""

    def __init__(self, store: JobStore, settings: Settings, *, worker_id: str, send: SendGenerate) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self.send = send

    def reap_once(self) -> list[tuple[str, str]]:
        """One round, if this worker wins the round's lock: [(job_id, action), ...]."""
        lock_ms = max(100, int(self.settings.reaper_interval * 900))
        if not self.store.client.set(REAPER_LOCK, self.worker_id, nx=True, px=lock_ms):
            return []
        done = self._reap_expired()
        min_age = self.settings.lease_ttl
        requeued = frozenset(job_id for job_id, action in done if action == "requeued")
        for job_id in rescue_orphans(self.store, self.send, min_age=min_age, already_sent=requeued):
            done.append((job_id, "resent"))
        for job_id in resend_messageless(self.store, self.send, min_age=min_age):
            done.append((job_id, "resent"))
        return done

    def _reap_expired(self) -> list[tuple[str, str]]:
        """Requeue, fail or cancel every running job whose lease expired."""
        store = self.store
        done: list[tuple[str, str]] = []
        for job_id in store.expired_leases():
            outcome = store.reap(job_id)
            done.append((job_id, outcome.action))
            if outcome.action == "requeued":
                record = store.get(job_id)
                self.send(job_id, record.priority if record else 0)
                log.warning("reaper: job %s lost its worker; requeued (attempt %s)", job_id, outcome.attempt)
            elif outcome.action == "failed":
                log.warning(
                    "reaper: job %s failed with worker_lost after %s attempts", job_id, outcome.attempt
                )
                notify_transition(store, store.get(job_id), "job.failed")
            elif outcome.action == "cancelled":
                notify_transition(store, store.get(job_id), "job.cancelled")
        return done
