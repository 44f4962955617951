"""A job's token deltas on their way from the engine thread to its Redis stream (no tensor code).

``DeltaWriter`` is what one attempt of a job hands the engine as its ``on_token``: the engine thread
only puts each delta (choice index, text, logprob entries, choice 0's token ids) on a queue; the stream pump
(``tnllm/worker/stream_pump.py``) and the task's final flush take it from there, numbered so a write
whose answer was lost is never applied twice. A flush is one stream entry: its ``text`` is choice
0's, and when the job has several choices or logprobs its per-choice deltas ride along packed
(``store.entries.pack_deltas``), merged per choice. Choice 0's token ids go with the entry too
(``ids``), so a requeued job resumes from them (docs/STATE.md).
"""

from __future__ import annotations

import logging
import queue
import threading

import redis

from tnllm.engine.types import TokenEvent
from tnllm.errors import LeaseLost
from tnllm.protocol.outputs import ChoiceDelta, TokenLogprob
from tnllm.store.entries import pack_deltas
from tnllm.store.sync import JobStore

#: One delta as the engine thread queues it: (choice index, text, logprob entries or None, token ids).
Piece = tuple[int, str, list[TokenLogprob] | None, list[int]]

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
        self._inbox: queue.SimpleQueue[Piece] = queue.SimpleQueue()
        self._pending = ""  # the text of the entry to write (choice 0's)
        self._deltas = ""  # its packed per-choice deltas ('' = a plain text entry)
        self._parts: dict[int, ChoiceDelta] = {}  # what ``_pending`` / ``_deltas`` were packed from
        self._ids: list[int] = []  # choice 0's token ids of ``_pending``
        self._seq = 0  # the number of the last text taken (``_pending``'s while it is set)
        self._in_doubt = False  # ``_pending``'s write failed unanswered: resend it unchanged
        self._failing = False

    @property
    def seq(self) -> int:
        """The sequence number of the text ``take`` returned (send it along)."""
        return self._seq

    @property
    def deltas(self) -> str:
        """The packed per-choice deltas that go with what ``take`` returned ('' = plain text)."""
        return self._deltas

    @property
    def ids(self) -> list[int]:
        """Choice 0's token ids that go with what ``take`` returned."""
        return self._ids

    def on_token(self, event: TokenEvent) -> None:
        """Engine-thread callback: never blocks (choice 0's tokens whose text is held back count)."""
        ids = list(event.token_ids) if event.index == 0 else []
        if event.text or event.logprobs or ids:
            self._inbox.put((event.index, event.text, event.logprobs, ids))

    def take(self) -> str:
        """The text to write next ('' if none; see ``deltas`` for the rest of the entry), numbered
        ``seq``: the pending entry unchanged while its write is in doubt, else the pending entry
        and the deltas arrived since, merged per choice (under a new number when nothing was
        pending). The caller holds ``lock``."""
        if self._in_doubt:
            return self._pending
        fresh = not self._parts
        while True:
            try:
                index, text, logprobs, ids = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._ids.extend(ids)
            part = self._parts.setdefault(index, ChoiceDelta(index=index))
            part.text += text
            if logprobs:
                part.logprobs = [*(part.logprobs or []), *logprobs]
        if self._parts and fresh:
            self._seq += 1
        self._pending, self._deltas = pack_deltas([self._parts[i] for i in sorted(self._parts)])
        return self._pending

    @property
    def has_pending(self) -> bool:
        """``take`` returned an entry that is not written yet (its text may be '')."""
        return bool(self._parts)

    def written(self) -> None:
        """What ``take`` returned is in the stream now. The caller holds ``lock``."""
        self._pending = ""
        self._deltas = ""
        self._parts = {}
        self._ids = []
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
            while True:
                self.take()
                if not self.has_pending:
                    return True
                try:
                    ids = self.store.append(
                        self.job_id,
                        self.worker_id,
                        self._pending,
                        seq=self._seq,
                        deltas=self._deltas,
                        ids=self._ids,
                    )
                except Exception as exc:  # no answer: it may have been applied
                    self.write_failed(exc)
                    if not isinstance(exc, TRANSIENT):
                        raise
                    return False
                self._failing = False
                if not ids:
                    raise LeaseLost(self.job_id)
                self.written()  # also when the answer is ALREADY_APPLIED: it is in the stream
