"""The reaper: jobs whose worker died go back on the queue, or fail with ``worker_lost``.

Every worker runs a round every ``reaper_interval``; a short Redis lock (SET NX PX) lets one worker
act per round. A running job whose lease expired is requeued (a new Celery message is sent) or, after
``max_attempts``, failed; one whose cancel was requested is cancelled. Then the messages that a dead
worker had received but not started are sent again (``tnllm/worker/orphans.py``).

A Redis outage expires leases of live workers too (their renewals could not get through). So a
round that follows a gap in the rounds of every worker (Redis down or unreachable) starts a grace
of one ``lease_ttl`` during which nothing is reaped: live workers renew their leases in that time
and keep their jobs; the jobs of a worker that died are reaped when the grace ends.
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
        self._waiting = False

    @property
    def gap(self) -> float:
        """Seconds without a reaper round (of any worker) that mark an outage: less than a lease
        outlives its last renewal, so every outage that can expire a lease is seen; at least two
        rounds, so one slow round is not taken for an outage."""
        s = self.settings
        return max(s.lease_ttl - s.lease_renew_interval, 2 * s.reaper_interval)

    def reap_once(self) -> list[tuple[str, str]]:
        """One round, if this worker wins the round's lock: [(job_id, action), ...].

        After an outage (``JobStore.reaper_gate``) nothing is reaped for one ``lease_ttl``: the
        leases that expired while Redis was away are judged once live workers had time to renew
        them, so they keep their jobs while a worker that died is still recovered after the grace.
        """
        wait = self.store.reaper_gate(self.gap, self.settings.lease_ttl)
        if wait > 0:
            if not self._waiting:
                log.warning("reaper: Redis was unreachable for a while; judging leases again in %.1fs", wait)
            self._waiting = True
            return []
        self._waiting = False
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
