"""A job's token deltas on their way from the engine thread to its Redis stream (no tensor code).

``DeltaWriter`` is what one attempt of a job hands the engine as its ``on_token``: the engine thread
only puts text and token ids on a queue (the ids go to the stream with their text, so a requeued
job resumes from them: docs/STATE.md); the stream pump (``tnllm/worker/stream_pump.py``) and the task's final
flush take it from there, numbered so a write whose answer was lost is never applied twice.
"""

from __future__ import annotations

import logging
import queue
import threading

import redis

from tnllm.engine.types import TokenEvent
from tnllm.errors import LeaseLost
from tnllm.store.sync import JobStore

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

    def __init__(self, store: JobStore, job_id: str, worker_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.lock = threading.Lock()
        self._inbox: queue.SimpleQueue[tuple[str, list[int]]] = queue.SimpleQueue()
        self._pending = ""
        self._pending_ids: list[int] = []
        self._seq = 0  # the number of the last text taken (``_pending``'s while it is set)
        self._in_doubt = False  # ``_pending``'s write failed unanswered: resend it unchanged
        self._failing = False

    @property
    def seq(self) -> int:
        """The sequence number of the text ``take`` returned (send it along)."""
        return self._seq

    def on_token(self, event: TokenEvent) -> None:
        """Engine-thread callback: never blocks (tokens whose text is held back still count)."""
        if event.text or event.token_ids:
            self._inbox.put((event.text, list(event.token_ids)))

    @property
    def ids(self) -> list[int]:
        """The token ids of the text ``take`` returned."""
        return self._pending_ids

    def take(self) -> str | None:
        """The text to write next (None if nothing; its token ids are ``ids``), numbered ``seq``:
        the pending text unchanged while its write is in doubt, else the pending text and the
        deltas arrived since, joined (under a new number when nothing was pending). The caller
        holds ``lock``."""
        pending = bool(self._pending or self._pending_ids)
        if self._in_doubt:
            return self._pending if pending else None
        parts = [self._pending] if self._pending else []
        fresh = False
        while True:
            try:
                text, ids = self._inbox.get_nowait()
            except queue.Empty:
                break
            parts.append(text)
            self._pending_ids.extend(ids)
            fresh = True
        if fresh and not pending:
            self._seq += 1
        self._pending = "".join(parts)
        return self._pending if (self._pending or self._pending_ids) else None

    def written(self) -> None:
        """What ``take`` returned is in the stream now. The caller holds ``lock``."""
        self._pending = ""
        self._pending_ids = []
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
            while (text := self.take()) is not None:
                try:
                    ids = self.store.append(self.job_id, self.worker_id, text, seq=self._seq, ids=self.ids)
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
