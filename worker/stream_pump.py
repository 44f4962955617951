"""Per-process stream pump: one thread writes the token deltas of every running job (no tensor code).

The engine thread hands deltas to each job's ``DeltaWriter`` (a queue put, never Redis). Every
``stream_flush_interval`` the pump drains all writers and appends their text in ONE Redis pipeline of
fenced APPEND calls, and every ``CANCEL_EVERY`` rounds reads every job's ``cancel_requested`` in one
more. A job whose append answers "not the owner" is marked lost and its engine request cancelled (it
writes nothing more); a cancel request sets the job's flag and cancels its engine request, so it
stops within about one round. Before, each of up to 256 task threads did these round trips itself
(~7,700 Redis calls/s of Python in the worker process, competing for the GIL with the engine loop).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis

from worker.engine.types import TokenEvent

if TYPE_CHECKING:
    from worker.runtime import ActiveJob

log = logging.getLogger(__name__)

#: Redis errors that mean "try again shortly" (an outage or a restart), not "give up".
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
#: The pump reads cancel requests every this many rounds (2 x 50 ms by default).
CANCEL_EVERY = 2


class LeaseLost(Exception):
    """Another worker owns the job now (or it was reaped): stop without writing anything."""


class DeltaWriter:
    """Collects deltas from the engine thread; the pump (and the task's final flush) write them.

    ``lock`` serialises writers of the same job (pump thread and task thread), so text is written
    once and in order.
    """

    def __init__(self, store: Any, job_id: str, worker_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.lock = threading.Lock()
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: list[str] = []
        self._failing = False

    def on_token(self, event: TokenEvent) -> None:
        """Engine-thread callback: never blocks."""
        if event.text:
            self._inbox.put(event.text)

    def take(self) -> str:
        """The text not yet written (arrived deltas joined). The caller holds ``lock``."""
        while True:
            try:
                self._pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if len(self._pending) > 1:
            self._pending[:] = ["".join(self._pending)]
        return self._pending[0] if self._pending else ""

    def written(self) -> None:
        """What ``take`` returned is in the stream now. The caller holds ``lock``."""
        self._pending.clear()
        self._failing = False

    def write_failed(self, exc: BaseException) -> None:
        """The write of what ``take`` returned failed; it stays pending (logged once per outage)."""
        if not self._failing:
            log.warning("job %s: stream write failed (%s); will retry", self.job_id, exc)
        self._failing = True

    def flush(self) -> bool:
        """Append what arrived as one stream entry; True when nothing is left unwritten.

        While Redis is down the text stays pending for the next flush. Raises LeaseLost when the
        store says this worker no longer owns the job. Safe beside the pump (``lock``).
        """
        with self.lock:
            text = self.take()
            if not text:
                return True
            try:
                ids = self.store.append(self.job_id, self.worker_id, text)
            except TRANSIENT as exc:
                self.write_failed(exc)
                return False
            self._failing = False
            if not ids:
                raise LeaseLost(self.job_id)
            self.written()
            return True


class StreamPump:
    """One thread per worker process: batched stream writes and cancel checks for all running jobs."""

    def __init__(self, store: Any, worker_id: str, interval: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.interval = interval
        self._jobs: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rounds = 0
        self._failing = False

    # --- registry (task threads) ---------------------------------------------------------------
    def add(self, job: ActiveJob) -> None:
        """Serve ``job`` from the next round on (its writer, once attached, and its cancel flag)."""
        with self._lock:
            self._jobs[job.job_id] = job

    def discard(self, job_id: str) -> None:
        """Stop serving a job (its task ended)."""
        with self._lock:
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
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # never let one bad round stop the streams of every job
                log.exception("stream pump round failed")

    # --- one round -----------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: write every job's pending deltas; every CANCEL_EVERY rounds, read cancels."""
        self._rounds += 1
        jobs = [job for job in self.jobs() if not job.lost.is_set()]
        self.flush(jobs)
        if self._rounds % CANCEL_EVERY == 0:
            self.check_cancels(jobs)

    def flush(self, jobs: Iterable[ActiveJob]) -> None:
        """Append the pending text of ``jobs`` in one pipeline; mark jobs that lost their lease."""
        held: list[tuple[ActiveJob, DeltaWriter, str]] = []
        try:
            for job in jobs:
                writer = job.writer
                # A writer busy with its task's final flush is skipped: that flush writes its text.
                if writer is None or not writer.lock.acquire(blocking=False):
                    continue
                text = ""
                try:
                    text = writer.take()
                finally:
                    if not text:
                        writer.lock.release()
                if text:
                    held.append((job, writer, text))
            if not held:
                return
            try:
                answers = self.store.append_many(self.worker_id, {job.job_id: [t] for job, _, t in held})
            except TRANSIENT as exc:
                if not self._failing:
                    log.warning("stream pump: Redis unavailable (%s); deltas stay pending", exc)
                self._failing = True
                for _, writer, _ in held:
                    writer.write_failed(exc)
                return
            self._failing = False
            for job, writer, _ in held:
                answer = answers[job.job_id]
                if isinstance(answer, Exception):
                    writer.write_failed(answer)
                elif answer:
                    writer.written()
                else:  # the fence: this worker no longer owns the job; write nothing more
                    job.lost.set()
                    job.stop_engine()
                    log.warning("job %s: lease lost; cancelling its generation", job.job_id)
        finally:
            for _, writer, _ in held:
                writer.lock.release()

    def check_cancels(self, jobs: Iterable[ActiveJob]) -> None:
        """Read ``cancel_requested`` of every job not yet cancelled, in one pipeline."""
        todo = [job for job in jobs if not job.cancel.is_set()]
        if not todo:
            return
        try:
            flags = self.store.cancels_requested([job.job_id for job in todo])
        except TRANSIENT:
            return  # the next round asks again
        for job in todo:
            if flags.get(job.job_id):
                job.request_cancel()
