"""Per-process stream pump: one thread writes the token deltas of every running job (no tensor code).

The engine thread hands deltas to each job's ``DeltaWriter`` (a queue put, never Redis). Every
``stream_flush_interval`` the pump drains all writers and sends their text in ONE call of the
APPEND_MANY script, which for each job checks the fence (status running, owned by this worker),
appends the text and reads ``cancel_requested``. A job this worker no longer owns is marked lost
and its engine request cancelled (nothing more is written); a cancel request sets the job's flag
and cancels its engine request, so generation stops within about one round. Before, each of up to
256 task threads made these round trips itself (~7,700 Redis calls/s of Python in the worker
process, competing for the GIL with the engine's step loop).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import redis

from tnllm.engine.types import TokenEvent
from tnllm.errors import LeaseLost
from tnllm.store.ops import AppendAck

if TYPE_CHECKING:
    from tnllm.worker.runtime import ActiveJob

log = logging.getLogger(__name__)

#: Redis errors that mean "try again shortly" (an outage or a restart), not "give up".
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class DeltaWriter:
    """Collects deltas from the engine thread; the pump (and the task's final flush) write them.

    ``lock`` serialises writers of the same job (pump thread and task thread), so text is written
    once and in order. Each flush carries a sequence number (1, 2, ... for this writer, i.e. this
    attempt of the job) that Redis remembers (scripts.py): text whose write failed without an
    answer may have been applied, so it stays pending *as it was* under its number and a resend
    of applied text is recognised, not written twice; deltas arriving meanwhile wait for the next
    number. Text that Redis refused for sure (XADD failed) takes them along under its number.
    """

    def __init__(self, store: Any, job_id: str, worker_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.lock = threading.Lock()
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending = ""
        self._seq = 0  # the number of the last text taken (``_pending``'s while it is set)
        self._in_doubt = False  # ``_pending``'s write failed unanswered: resend it unchanged
        self._failing = False

    @property
    def seq(self) -> int:
        """The sequence number of the text ``take`` returned (send it along)."""
        return self._seq

    def on_token(self, event: TokenEvent) -> None:
        """Engine-thread callback: never blocks."""
        if event.text:
            self._inbox.put(event.text)

    def take(self) -> str:
        """The text to write next ('' if none), numbered ``seq``: the pending text unchanged while
        its write is in doubt, else the pending text and the deltas arrived since, joined (under a
        new number when nothing was pending). The caller holds ``lock``."""
        if self._in_doubt:
            return self._pending
        parts = [self._pending] if self._pending else []
        while True:
            try:
                parts.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if parts and not self._pending:
            self._seq += 1
        self._pending = "".join(parts)
        return self._pending

    def written(self) -> None:
        """What ``take`` returned is in the stream now. The caller holds ``lock``."""
        self._pending = ""
        self._in_doubt = False
        self._failing = False

    def write_failed(self, exc: BaseException) -> None:
        """The write of what ``take`` returned failed without an answer (it may have been applied):
        it stays pending, unchanged, under its number (logged once per outage)."""
        self._in_doubt = True
        self._log_failure(exc)

    def write_refused(self, exc: BaseException) -> None:
        """Redis answered that it did not write what ``take`` returned: it stays pending, and may
        grow, under its number."""
        self._in_doubt = False
        self._log_failure(exc)

    def _log_failure(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("job %s: stream write failed (%s); will retry", self.job_id, exc)
        self._failing = True

    def flush(self) -> bool:
        """Append everything that arrived; True when nothing is left unwritten.

        While Redis is down the text stays pending for the next flush. Raises LeaseLost when the
        store says this worker no longer owns the job. Safe beside the pump (``lock``).
        """
        with self.lock:
            while text := self.take():
                try:
                    ids = self.store.append(self.job_id, self.worker_id, text, seq=self._seq)
                except Exception as exc:  # no answer: it may have been applied
                    self.write_failed(exc)
                    if not isinstance(exc, TRANSIENT):
                        raise
                    return False
                self._failing = False
                if not ids:
                    raise LeaseLost(self.job_id)
                self.written()  # also when the answer is ALREADY_APPLIED: it is in the stream
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
            try:
                acks = self.store.append_many(self.worker_id, texts, seqs)
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
        """The job's pending text ('' if none), keeping its writer locked in ``held`` until written.

        A writer busy with its task's final flush is skipped: that flush writes its text.
        """
        writer = job.writer
        if writer is None or not writer.lock.acquire(blocking=False):
            return ""
        text = ""
        try:
            text = writer.take()
        finally:
            if text:
                held[job.job_id] = writer
            else:
                writer.lock.release()
        return text

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
