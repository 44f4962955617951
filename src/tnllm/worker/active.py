"""The jobs running in this worker process: one ``ActiveJob`` per attempt, and their registry.

An ``ActiveJob`` carries the flags that the stream pump, the heartbeat and a warm shutdown set for
its task thread (lost, cancel, release, pause) and, once submitted, its engine request and delta writer.
``ActiveJobs`` is what the heartbeat renews leases for and what a warm shutdown releases.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tnllm.engine.handle import Cancels
from tnllm.worker.deltas import DeltaWriter

log = logging.getLogger(__name__)


@dataclass
class ActiveJob:
    """A job running in this process, with flags the pump/heartbeat/shutdown threads set for its
    task, and (once submitted) its engine request and delta writer, which the stream pump serves."""

    job_id: str
    priority: int = 0  # the job's priority (what a delivered job may preempt: worker/admission.py)
    started: float = field(default_factory=time.monotonic)
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    pause: threading.Event = field(default_factory=threading.Event)
    request_id: str | None = None
    writer: DeltaWriter | None = None
    engine: Cancels | None = None

    def attach(self, engine: Cancels, request_id: str, writer: DeltaWriter) -> None:
        """The job's engine request was submitted: the pump writes ``writer``'s deltas from now on."""
        self.engine, self.request_id = engine, request_id
        self.writer = writer  # set last: the pump reads it without a lock

    def stop_engine(self) -> None:
        """Cancel the job's engine request, if it has one (it leaves the batch within one step)."""
        if self.engine is not None and self.request_id is not None:
            self.engine.cancel(self.request_id)

    def request_cancel(self) -> None:
        """A cancel was requested: flag it for the task and stop generating (the partial text stays)."""
        if not self.cancel.is_set():
            self.cancel.set()
            self.stop_engine()

    def request_pause(self) -> None:
        """A pause was requested: flag it for the task, which stops generating and parks the job."""
        if not self.pause.is_set():
            self.pause.set()
            self.stop_engine()

    def mark_lost(self) -> None:
        """Another owner has the job now (another worker, or a newer attempt in this process): flag
        it for the task and stop generating."""
        if not self.lost.is_set():
            self.lost.set()
            self.stop_engine()


class ActiveJobs:
    """The registry of the jobs this process runs (task threads add and remove; others read)."""

    def __init__(self) -> None:
        self._jobs: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        #: set at a warm shutdown: deliveries waiting for room hand their message back
        self.closing = threading.Event()
        #: deliveries waiting for room (worker/admission.py): job id -> (-priority, arrival)
        self._waiting: dict[str, tuple[int, int]] = {}
        self._arrivals = 0

    @contextlib.contextmanager
    def waiting(self, job_id: str, priority: int) -> Iterator[Callable[[], bool]]:
        """Register a delivery waiting for room while the block runs; yields ``first_in_line()``:
        no other delivery waiting here comes first (higher priority, then earlier arrival: the
        broker's order)."""
        with self._lock:
            self._arrivals += 1
            key = (-priority, self._arrivals)
            self._waiting[job_id] = key

        def first_in_line() -> bool:
            with self._lock:
                return key <= min(self._waiting.values())

        try:
            yield first_in_line
        finally:
            with self._lock:
                self._waiting.pop(job_id, None)

    def track(self, job_id: str) -> ActiveJob:
        """Register a job this process just claimed.

        If an earlier attempt of the same job still runs here (this process stalled past its lease,
        the job was requeued and came back to it), that attempt is abandoned as if its lease were
        lost: the owner fence is per process, so only this process can tell the two apart."""
        job = ActiveJob(job_id)
        with self._lock:
            earlier = self._jobs.get(job_id)
            self._jobs[job_id] = job
        if earlier is not None:
            log.warning("job %s: claimed again by this process; abandoning its earlier attempt", job_id)
            earlier.mark_lost()
        return job

    def untrack(self, job_id: str, job: ActiveJob | None = None) -> None:
        """Forget a job this process no longer runs (only ``job``'s attempt, when given)."""
        with self._lock:
            if job is None or self._jobs.get(job_id) is job:
                self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> ActiveJob | None:
        """The attempt of ``job_id`` running here, if any."""
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self) -> list[ActiveJob]:
        """The jobs running here, now."""
        with self._lock:
            return list(self._jobs.values())

    def release_all(self) -> None:
        """Ask every running job to go back to the queue (warm shutdown ran out of grace)."""
        for job in self.snapshot():
            job.release.set()
