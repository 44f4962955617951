"""Per-process stream pump: one thread writes the token deltas of every running job (no tensor code).

The engine thread hands deltas to each job's ``DeltaWriter`` (a queue put, never Redis). Every
``stream_flush_interval`` the pump drains all writers and sends their text in ONE call of the
APPEND_MANY script, which for each job checks the fence (status running, owned by this worker),
appends the text and reads ``cancel_requested``. A job this worker no longer owns is marked lost
and its engine request cancelled (nothing more is written); a cancel request sets the job's flag
and cancels its engine request, so generation stops within about one round (one Redis call per
round for every job, instead of a few per job and delta from each task thread).
"""

from __future__ import annotations

import logging
import threading

from tnllm.store.ops import AppendAck
from tnllm.store.sync import JobStore
from tnllm.worker.active import ActiveJob
from tnllm.worker.deltas import TRANSIENT, DeltaWriter

log = logging.getLogger(__name__)


class StreamPump:
    """One thread per worker process: batched stream writes and cancel checks for all running jobs."""

    def __init__(self, store: JobStore, worker_id: str, interval: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.interval = interval
        self._jobs: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # --- registry (task threads) ---------------------------------------------------------------
    def add(self, job: ActiveJob) -> None:
        """Serve ``job`` from the next round on (its writer, once attached, and its cancel flag)."""
        with self._lock:
            self._jobs[job.job_id] = job

    def discard(self, job_id: str, job: ActiveJob | None = None) -> None:
        """Stop serving a job (its task ended); only ``job``'s attempt, when given."""
        with self._lock:
            if job is None or self._jobs.get(job_id) is job:
                self._jobs.pop(job_id, None)

    def jobs(self) -> list[ActiveJob]:
        """A snapshot of the jobs served."""
        with self._lock:
            return list(self._jobs.values())

    # --- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Run rounds on a daemon thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tnllm-stream-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (the tasks' final flushes write whatever is left)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        failed = False
        while not self._stop.wait(self.interval):
            try:
                self.tick()
                failed = False
            except Exception:  # never let one bad round stop the streams of every job
                if not failed:  # once per streak, not 20 times a second
                    log.exception("stream pump round failed; the text stays pending")
                failed = True

    # --- one round -----------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: append every job's pending deltas and read every job's fence and cancel flag,
        all in one script call."""
        jobs = [job for job in self.jobs() if not job.lost.is_set()]
        if not jobs:
            return
        held: dict[str, DeltaWriter] = {}
        try:
            texts: dict[str, str] = {}
            for job in jobs:
                texts[job.job_id] = self._take(job, held)
            seqs = {job_id: writer.seq for job_id, writer in held.items()}
            ids = {job_id: writer.ids for job_id, writer in held.items()}
            deltas = {job_id: writer.deltas for job_id, writer in held.items() if writer.deltas}
            try:
                acks = self.store.append_many(self.worker_id, texts, seqs, ids, deltas)
            except Exception as exc:
                for writer in held.values():
                    writer.write_failed(exc)
                if not isinstance(exc, TRANSIENT):
                    raise
                if not self._failing:
                    log.warning("stream pump: Redis unavailable (%s); deltas stay pending", exc)
                self._failing = True
                return
            self._failing = False
            for job in jobs:
                self._apply(job, acks[job.job_id], held.get(job.job_id))
        finally:
            for writer in held.values():
                writer.lock.release()

    @staticmethod
    def _take(job: ActiveJob, held: dict[str, DeltaWriter]) -> str:
        """The job's pending text ('' if none, or only other choices' deltas: ``writer.deltas``),
        keeping its writer locked in ``held`` while it has an entry to write.

        A writer busy with its task's final flush is skipped: that flush writes its text.
        """
        writer = job.writer
        if writer is None or not writer.lock.acquire(blocking=False):
            return ""
        text = ""
        pending = False
        try:
            text = writer.take()
            pending = writer.has_pending
        finally:
            if pending:
                held[job.job_id] = writer
            else:
                writer.lock.release()
        return text or ""

    def _apply(self, job: ActiveJob, ack: AppendAck, writer: DeltaWriter | None) -> None:
        if not ack.owned:
            # The fence: another worker owns the job (or it was reaped). A job whose own task just
            # finished or released it has left the pump first: that is no loss.
            with self._lock:
                current = self._jobs.get(job.job_id) is job
            if current:
                log.warning("job %s: lease lost; cancelling its generation", job.job_id)
                job.mark_lost()
            return
        if writer is not None:
            if ack.written:
                writer.written()
            else:
                writer.write_refused(RuntimeError("XADD failed"))
        if ack.cancel_requested:
            job.request_cancel()
        elif ack.pause_requested:
            job.request_pause()
