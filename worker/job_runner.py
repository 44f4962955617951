"""Run one job on this worker: fence → engine request → stream deltas → finish (no tensor code).

The engine thread hands token deltas to a ``DeltaWriter`` (a queue put, never Redis); the task
thread drains it every ``POLL_S`` into the job's stream, polls for a cancel, renews nothing (the
heartbeat thread does) and enforces the time limit. Every write checks that this worker still owns
the job, so a job taken over by another worker (after this one stalled) is never written twice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from worker.engine.types import EngineError, EngineRequest, EngineResult, SamplingParams, TokenEvent
from worker.events import notify_transition
from worker.faults import crash_now, faults_for
from worker.jobstore.records import JobError, JobRecord, JobResult, JobStatus, Usage

if TYPE_CHECKING:
    from worker.runtime import ActiveJob, WorkerRuntime

log = logging.getLogger(__name__)

#: How often the task thread flushes deltas and checks cancel / time limit / lease (seconds).
POLL_S = 0.05
#: Redis errors that mean "try again shortly" (an outage or a restart), not "give up".
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)

T = TypeVar("T")


class LeaseLost(Exception):
    """Another worker owns the job now (or it was reaped): stop without writing anything."""


class DeltaWriter:
    """Collects deltas from the engine thread; the task thread appends them to Redis in batches."""

    def __init__(self, store: Any, job_id: str, worker_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: list[str] = []
        self._failing = False

    def on_token(self, event: TokenEvent) -> None:
        """Engine-thread callback: never blocks."""
        if event.text:
            self._inbox.put(event.text)

    def flush(self) -> bool:
        """Append what arrived as one stream entry; True when nothing is left unwritten.

        While Redis is down the text stays pending for the next flush. Raises LeaseLost when the
        store says this worker no longer owns the job.
        """
        while True:
            try:
                self._pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if not self._pending:
            return True
        try:
            ids = self.store.append(self.job_id, self.worker_id, "".join(self._pending))
        except TRANSIENT as exc:
            if not self._failing:
                log.warning("job %s: stream write failed (%s); will retry", self.job_id, exc)
            self._failing = True
            return False
        self._failing = False
        if not ids:
            raise LeaseLost(self.job_id)
        self._pending.clear()
        return True


def retry_transient(fn: Callable[[], T], *, what: str, deadline_s: float) -> T:
    """Call ``fn`` until it does not raise a transient Redis error or ``deadline_s`` passes."""
    end = time.monotonic() + deadline_s
    delay = 0.1
    while True:
        try:
            return fn()
        except TRANSIENT as exc:
            if time.monotonic() >= end:
                raise
            log.warning("%s: Redis unavailable (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def build_request(rt: WorkerRuntime, record: JobRecord) -> EngineRequest:
    """The engine request of a job: chat template + tokenizer for the prompt, sampling params."""
    p = record.params
    prompt_ids = rt.prompt_ids(p.chat_messages(rt.settings.system_prompt))
    params = SamplingParams(
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        repetition_penalty=p.repetition_penalty,
        stop=tuple(p.stop),
        seed=p.seed,
    )
    return EngineRequest(request_id=f"{record.id}:{record.attempt}", prompt_ids=prompt_ids, params=params)


def run_job(rt: WorkerRuntime, job_id: str) -> str:
    """Run one delivery of ``job_id``; returns what happened (for logs and tests)."""
    store = rt.store
    claimed_at = time.time()  # one value for every retry: a claim that ran but lost its reply is ours
    claim = retry_transient(
        lambda: store.claim(job_id, rt.worker_id, now=claimed_at),
        what=f"claim {job_id}",
        deadline_s=rt.settings.lease_ttl,
    )
    if not claim.won:
        # A duplicate delivery (visibility timeout, reaper requeue racing a slow worker...) of a job
        # that is running elsewhere, already terminal, cancelled while queued, or expired.
        log.info("job %s: not claimed (status %s); skipping this delivery", job_id, claim.status)
        return f"skipped:{claim.status}"
    active = rt.track(job_id)
    try:
        record = store.get(job_id)
        if record is None:
            return "missing"
        notify_transition(store, record, "job.running")
        return _run_claimed(rt, record, active)
    finally:
        rt.untrack(job_id)


def _run_claimed(rt: WorkerRuntime, record: JobRecord, active: ActiveJob) -> str:
    settings = rt.settings
    deadline = active.started + settings.job_time_limit
    faults = faults_for(record.metadata, settings.debug_faults)
    if faults.crash:
        crash_now(record.id)
    if faults.delay:
        early = _hold(rt, record.id, active, min(time.monotonic() + faults.delay, deadline))
        if early == "lost":
            return "lease_lost"
        if early == "release":
            return _release(rt, record)
        if early == "cancel":
            empty = JobResult(text="", finish_reason="cancelled", usage=Usage())
            return _finish(rt, record, JobStatus.CANCELLED, result=empty)
    if time.monotonic() >= deadline:
        return _timed_out(rt, record)
    try:
        request = build_request(rt, record)
        writer = DeltaWriter(rt.store, record.id, rt.worker_id)
        handle = rt.engine.submit(request, on_token=writer.on_token)
    except ValueError as exc:  # RequestRejected, malformed conversation, template errors
        return _finish(rt, record, JobStatus.FAILED, error=JobError(type="invalid_request", message=str(exc)))
    outcome = _wait(rt, record, active, handle, writer, deadline)
    if isinstance(outcome, str):
        return outcome
    try:
        # Redis may be down right now: keep trying a while (the result itself holds the full text).
        end = time.monotonic() + rt.finish_retry_s
        while not writer.flush() and time.monotonic() < end:
            time.sleep(0.2)
    except LeaseLost:
        return "lease_lost"
    status = JobStatus.CANCELLED if outcome.finish_reason == "cancelled" else JobStatus.SUCCEEDED
    result = JobResult(
        text=outcome.text,
        finish_reason=outcome.finish_reason,
        usage=Usage(prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens),
    )
    return _finish(rt, record, status, result=result)


def _hold(rt: WorkerRuntime, job_id: str, active: ActiveJob, until: float) -> str | None:
    """Sleep until ``until`` (debug delay) unless the job is lost, released or cancelled first."""
    polls = 0
    while time.monotonic() < until:
        if active.lost.is_set():
            return "lost"
        if active.release.is_set():
            return "release"
        polls += 1
        if polls % 2 == 0 and _cancel_requested(rt, job_id, active):
            return "cancel"
        time.sleep(POLL_S)
    return None


def _timed_out(rt: WorkerRuntime, record: JobRecord) -> str:
    message = f"job exceeded the time limit of {rt.settings.job_time_limit:g}s"
    return _finish(rt, record, JobStatus.FAILED, error=JobError(type="timeout", message=message))


def _wait(
    rt: WorkerRuntime, record: JobRecord, active: ActiveJob, handle: Any, writer: DeltaWriter, deadline: float
) -> EngineResult | str:
    """Wait for the engine, streaming deltas; the result, or a string saying how it ended early."""
    engine = rt.engine
    request_id = handle.request_id
    cancel_sent = False
    polls = 0
    while True:
        try:
            return handle.result(timeout=POLL_S)  # type: ignore[no-any-return]
        except TimeoutError:
            pass
        except EngineError as exc:
            log.exception("job %s: engine failed", record.id)
            return _finish(
                rt, record, JobStatus.FAILED, error=JobError(type="engine_error", message=str(exc))
            )
        polls += 1
        try:
            writer.flush()
        except LeaseLost:
            active.lost.set()
        if active.lost.is_set():
            engine.cancel(request_id)
            log.warning("job %s: lease lost; abandoning this run", record.id)
            return "lease_lost"
        if time.monotonic() > deadline:
            engine.cancel(request_id)
            _drain(handle)
            return _timed_out(rt, record)
        if active.release.is_set():
            engine.cancel(request_id)
            _drain(handle)
            return _release(rt, record)
        if not cancel_sent and polls % 2 == 0 and _cancel_requested(rt, record.id, active):
            engine.cancel(request_id)  # the engine retires it next step; result says "cancelled"
            cancel_sent = True


def _cancel_requested(rt: WorkerRuntime, job_id: str, active: ActiveJob) -> bool:
    if active.cancel.is_set():
        return True
    try:
        return bool(rt.store.cancel_requested(job_id))
    except TRANSIENT:
        return False


def _drain(handle: Any, timeout: float = 10.0) -> None:
    with contextlib.suppress(TimeoutError, EngineError):
        handle.result(timeout=timeout)


def _finish(
    rt: WorkerRuntime,
    record: JobRecord,
    status: JobStatus,
    *,
    result: JobResult | None = None,
    error: JobError | None = None,
) -> str:
    """Write the terminal state (retrying through Redis outages) while this worker owns the job."""
    store = rt.store

    finished_at = time.time()  # one value for every retry, so a write that ran is recognised

    def write() -> bool:
        return bool(
            store.finish(record.id, rt.worker_id, status, result=result, error=error, now=finished_at)
        )

    written = retry_transient(write, what=f"finish {record.id}", deadline_s=rt.finish_retry_s)
    if not written:
        log.warning("job %s: not finished by this worker (taken over or reaped)", record.id)
        return "lease_lost"
    notify_transition(store, store.get(record.id), f"job.{status.value}")
    return str(status.value)


def _release(rt: WorkerRuntime, record: JobRecord) -> str:
    """Warm shutdown ran out of grace: put the job back on the queue for another worker."""
    outcome = retry_transient(
        lambda: rt.store.release(record.id, rt.worker_id),
        what=f"release {record.id}",
        deadline_s=rt.finish_retry_s,
    )
    if outcome.action == "requeued":
        rt.send_generate(record.id, record.priority)
        log.info("job %s: released back to the queue on shutdown", record.id)
    return f"released:{outcome.action}"
