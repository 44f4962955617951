"""Leases and heartbeat: every few seconds, renew the leases of the jobs running here and publish
this worker's heartbeat (``tnllm:workers:{id}``: readiness, free slots, throughput).

A renewal also answers whether this worker still owns each job and whether a cancel was requested:
a job owned elsewhere is marked lost, a cancelled one is asked to stop (the stream pump notices
both sooner; this is the fallback for jobs that stream nothing).
"""

from __future__ import annotations

import logging
import os
import time

from tnllm.config import Settings
from tnllm.engine.client import EngineClient
from tnllm.store.ops import WorkerInfo
from tnllm.store.sync import JobStore
from tnllm.worker.active import ActiveJob

log = logging.getLogger(__name__)


class Heartbeat:
    """Lease renewal and the heartbeat record of one worker process."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        worker_id: str,
        hostname: str,
        own_queue: str | None = None,
    ) -> None:
        self.store = store
        #: every queue this worker consumes (the reaper looks for messages there)
        self.queues = [*([own_queue] if own_queue else []), *settings.worker_queues]
        self.settings = settings
        self.worker_id = worker_id
        self.hostname = hostname
        self.started_at = time.time()

    @property
    def ttl(self) -> float:
        """How long a heartbeat stays valid (a few renew intervals)."""
        return max(self.settings.lease_ttl, 3 * self.settings.lease_renew_interval)

    def beat(self, jobs: list[ActiveJob], engine: EngineClient | None, metrics_port: int) -> None:
        """Renew the leases of ``jobs`` (the jobs running here), then publish the heartbeat."""
        self.renew(jobs)
        self.store.heartbeat_worker(self.info(len(jobs), engine, metrics_port), ttl=self.ttl)

    def renew(self, jobs: list[ActiveJob]) -> None:
        """Renew the leases of ``jobs`` in one pipeline, noting cancels and lost leases."""
        statuses = self.store.renew_leases([job.job_id for job in jobs], self.worker_id)
        for job in jobs:
            status = statuses[job.job_id]
            if isinstance(status, Exception):
                log.warning("job %s: lease renewal failed: %s", job.job_id, status)
            elif not status.owned:
                job.mark_lost()
            elif status.cancel_requested:
                job.request_cancel()

    def info(self, busy: int, engine: EngineClient | None, metrics_port: int) -> WorkerInfo:
        """This worker's heartbeat record, with ``busy`` jobs running."""
        slots = int(engine.slots) if engine is not None else 0
        tokens_per_s = step_time_s = 0.0
        if engine is not None:
            try:
                stats = engine.stats()
                tokens_per_s, step_time_s = float(stats.tokens_per_s), float(stats.step_time_s)
                # what one slot really takes per token under this load, gaps between jobs included
                # (the last 10 s of throughput; steadier than the step-time average): ETAs
                rows = min(slots, stats.active + stats.waiting)
                if rows and tokens_per_s > 0:
                    step_time_s = rows / tokens_per_s
            except Exception:  # stats are best effort; a heartbeat must still go out
                log.debug("engine stats unavailable", exc_info=True)
        return WorkerInfo(
            id=self.worker_id,
            hostname=self.hostname,
            pid=os.getpid(),
            model=self.settings.model,
            model_loaded=engine is not None,
            slots=slots,
            free_slots=max(0, slots - busy),
            tokens_per_s=tokens_per_s,
            queues=list(self.queues),
            metrics_port=metrics_port,
            served_model=self.settings.served_name(),
            started_at=self.started_at,
            step_time_s=step_time_s,
        )
