"""Run one job on this worker: fence → engine request → stream deltas → finish (no tensor code).

The engine thread hands token deltas to a ``DeltaWriter`` (a queue put, never Redis); the process's
``StreamPump`` (tnllm/worker/stream_pump.py) writes them to the job's stream for every running job in one
pipeline per round and reads cancel requests, and the heartbeat thread renews the lease. The task
thread only waits on its engine request (``WAIT_S`` at a time) and looks at local flags: lost lease,
cancel, warm-shutdown release, time limit; at the end it flushes what is left and writes the result.
Every write checks that this worker still owns the job, so a job taken over by another worker
(after this one stalled) is never written twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from enum import Enum, StrEnum
from typing import TypeVar

from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineResult, TokenEvent
from tnllm.errors import EngineError, EngineLost, LeaseLost
from tnllm.protocol.jobs import JobError, JobErrorType, JobRecord, JobResult, JobStatus, Usage
from tnllm.protocol.outputs import Choice
from tnllm.store.resume import job_sampling, resumable, streamed_ids, streamed_since_reset
from tnllm.store.states import save_conversation
from tnllm.worker.active import ActiveJob
from tnllm.worker.deltas import TRANSIENT, DeltaWriter
from tnllm.worker.events import notify_transition
from tnllm.worker.faults import crash_after, crash_now, faults_for
from tnllm.worker.runtime import WorkerRuntime
from tnllm.worker.states import JobPrompt, conversation_of

__all__ = ["WAIT_S", "JobOutcome", "build_request", "job_result", "resume_ids", "retry_transient", "run_job"]

log = logging.getLogger(__name__)

#: Longest wait of a task thread between looks at its flags (release, time limit); lost leases and
#: cancels end the engine request themselves (the pump or heartbeat cancels it), waking it at once.
WAIT_S = 0.5
#: How often a held job (debug ``delay`` fault) looks at its flags.
HOLD_POLL_S = 0.05

T = TypeVar("T")


class JobOutcome(StrEnum):
    """How one delivery of a job ended (the task's return value, for logs and tests)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: The job record vanished between the claim and the read (expired).
    MISSING = "missing"
    #: Another owner has the job now (another worker, or a newer attempt here): nothing written.
    LEASE_LOST = "lease_lost"
    #: The engine process died under the job: nothing written, the reaper requeues it.
    ENGINE_LOST = "engine_lost"
    #: Not claimed: a duplicate delivery of a job in this state (or of an unknown one).
    SKIPPED_QUEUED = "skipped:queued"
    SKIPPED_RUNNING = "skipped:running"
    SKIPPED_SUCCEEDED = "skipped:succeeded"
    SKIPPED_FAILED = "skipped:failed"
    SKIPPED_CANCELLED = "skipped:cancelled"
    SKIPPED_UNKNOWN = "skipped:unknown"
    #: Warm shutdown ran out of grace: requeued, cancelled (a cancel was pending), or already gone.
    RELEASED_REQUEUED = "released:requeued"
    RELEASED_CANCELLED = "released:cancelled"
    RELEASED_NOT_OWNER = "released:not_owner"
    #: A pause was requested: the job left the engine and waits, paused, for its resume.
    PAUSED = "paused"
    SKIPPED_PAUSED = "skipped:paused"

    @classmethod
    def finished(cls, status: JobStatus) -> JobOutcome:
        """The outcome of a job this delivery finished with terminal ``status``."""
        return cls(status.value)

    @classmethod
    def skipped(cls, status: JobStatus | None) -> JobOutcome:
        """The outcome of a delivery that found the job ``status`` (None: unknown or expired)."""
        return cls(f"skipped:{status.value if status is not None else 'unknown'}")

    @classmethod
    def released(cls, action: str) -> JobOutcome:
        """The outcome of a release whose script answered ``action``."""
        if action == "requeued":
            return cls.RELEASED_REQUEUED
        return cls.RELEASED_CANCELLED if action == "cancelled" else cls.RELEASED_NOT_OWNER


class _Interrupt(Enum):
    """What ended a debug hold early."""

    LOST = "lost"
    RELEASE = "release"
    CANCEL = "cancel"


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


def build_request(
    rt: WorkerRuntime,
    record: JobRecord,
    prompt: JobPrompt | None = None,
    resume_ids: list[int] | None = None,
) -> EngineRequest:
    """The engine request of a job: its prompt (``rt.job_prompt``: rendered, or continuing an
    earlier job), the turn ends to save states at, its stored sampling params, as they are, its
    priority, and the tokens earlier attempts streamed (``resume_ids``: it goes on from them)."""
    p = record.params
    prompt = prompt or rt.job_prompt(p)
    return EngineRequest(
        f"{record.id}:{record.attempt}",
        prompt.ids,
        job_sampling(record),
        resume_ids=list(resume_ids or []),
        priority=record.priority,
        state_cache=p.state_cache,
        cache_points=prompt.points,
    )


def resume_ids(rt: WorkerRuntime, record: JobRecord) -> list[int]:
    """The token ids the job's stream already holds (earlier attempts: a crash, a release, a pause).

    A stream this version cannot resume from (text without ids, or a job that is not
    ``resumable``) is voided with a ``reset`` entry and the job starts over."""
    store = rt.store
    deadline = rt.settings.lease_ttl
    what = f"read the stream of {record.id}"
    entries = retry_transient(lambda: store.streamed(record.id), what=what, deadline_s=deadline)
    ids = streamed_ids(entries)
    if ids is None or (not resumable(record) and streamed_since_reset(entries)):
        log.warning("job %s: its stream cannot be resumed from; starting over", record.id)
        retry_transient(
            lambda: store.reset_stream(record.id, rt.worker_id, "not_resumable"),
            what=f"reset {record.id}",
            deadline_s=deadline,
        )
        return []
    if ids:
        log.info("job %s: resuming after %d streamed tokens", record.id, len(ids))
    return ids


def run_job(rt: WorkerRuntime, job_id: str) -> JobOutcome:
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
        return JobOutcome.skipped(claim.status)
    active = rt.track(job_id)
    try:
        record = store.get(job_id)
        if record is None:
            return JobOutcome.MISSING
        active.priority = record.priority
        notify_transition(store, record, "job.running")
        return _run_claimed(rt, record, active)
    finally:
        rt.untrack(job_id, active)


def _run_claimed(rt: WorkerRuntime, record: JobRecord, active: ActiveJob) -> JobOutcome:
    settings = rt.settings
    deadline = active.started + settings.job_time_limit
    faults = faults_for(record.metadata, settings.debug_faults)
    if faults.crash:
        crash_now(record.id)
    if faults.delay:
        early = _hold(active, min(time.monotonic() + faults.delay, deadline))
        if early is _Interrupt.LOST:
            return JobOutcome.LEASE_LOST
        if early is _Interrupt.RELEASE:
            return _release(rt, record)
        if early is _Interrupt.CANCEL:
            n = record.params.n
            empty = [Choice(index=i, text="", finish_reason="cancelled") for i in range(n)]
            result = JobResult(text="", finish_reason="cancelled", usage=Usage(), choices=empty)
            return _finish(rt, record, JobStatus.CANCELLED, result=result)
    if time.monotonic() >= deadline:
        return _timed_out(rt, record)
    try:
        prompt = rt.job_prompt(record.params)
        request = build_request(rt, record, prompt, resume_ids(rt, record))
        writer = DeltaWriter(rt.store, record.id, rt.worker_id)
        on_token: Callable[[TokenEvent], None] = writer.on_token
        if faults.crash_after_tokens and record.attempt == 1:
            on_token = crash_after(record.id, writer, faults.crash_after_tokens)
        engine = rt.running_engine()
        handle = engine.submit(request, on_token=on_token)
    except EngineLost as exc:
        return _engine_lost(record, exc)
    except ValueError as exc:  # RequestRejected, malformed conversation, template errors
        error = JobError(type=JobErrorType.INVALID_REQUEST, message=str(exc))
        return _finish(rt, record, JobStatus.FAILED, error=error)
    active.attach(engine, handle.request_id, writer)  # the stream pump writes its deltas from now on
    outcome = _wait(rt, record, active, handle, deadline)
    if isinstance(outcome, JobOutcome):
        return outcome
    if active.lost.is_set():  # the pump or heartbeat found another owner (and ended the request)
        log.warning("job %s: lease lost; abandoning this run", record.id)
        return JobOutcome.LEASE_LOST
    if outcome.finish_reason == "cancelled" and active.pause.is_set() and not active.cancel.is_set():
        _flush_quietly(active)  # the pump stopped the request for a pause: park it, keep its stream
        return _park(rt, record)
    try:
        # Redis may be down right now: keep trying a while (the result itself holds the full text).
        end = time.monotonic() + rt.finish_retry_s
        while not writer.flush() and time.monotonic() < end:
            time.sleep(0.2)
    except LeaseLost:
        return JobOutcome.LEASE_LOST
    return _finish_run(rt, record, prompt, outcome)


def _finish_run(rt: WorkerRuntime, record: JobRecord, prompt: JobPrompt, outcome: EngineResult) -> JobOutcome:
    """Write the result of a run that ended in the engine (its conversation first, if it succeeded)."""
    status = JobStatus.CANCELLED if outcome.finish_reason == "cancelled" else JobStatus.SUCCEEDED
    result = job_result(outcome)
    if status is JobStatus.SUCCEEDED:  # before the terminal write: a succeeded job can be continued
        conv = conversation_of(prompt, outcome, rt.worker_id)
        retry_transient(
            lambda: save_conversation(rt.store.client, record.id, conv, rt.store.ttl),
            what=f"conversation {record.id}",
            deadline_s=rt.finish_retry_s,
        )
    return _finish(rt, record, status, result=result)


def job_result(outcome: EngineResult) -> JobResult:
    """The job's result: choice 0 on top, usage over every choice, the choices in order."""
    usage = Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        cached_tokens=outcome.cached_tokens,
    )
    return JobResult(
        text=outcome.text,
        finish_reason=outcome.finish_reason,
        usage=usage,
        choices=[
            Choice(index=c.index, text=c.text, finish_reason=c.finish_reason, logprobs=c.logprobs)
            for c in outcome.choices
        ],
    )


def _hold(active: ActiveJob, until: float) -> _Interrupt | None:
    """Sleep until ``until`` (debug delay) unless the job is lost, released or cancelled first."""
    while time.monotonic() < until:
        if active.lost.is_set():
            return _Interrupt.LOST
        if active.release.is_set():
            return _Interrupt.RELEASE
        if active.cancel.is_set():  # set by the stream pump or the heartbeat
            return _Interrupt.CANCEL
        time.sleep(HOLD_POLL_S)
    return None


def _timed_out(rt: WorkerRuntime, record: JobRecord) -> JobOutcome:
    message = f"job exceeded the time limit of {rt.settings.job_time_limit:g}s"
    return _finish(rt, record, JobStatus.FAILED, error=JobError(type=JobErrorType.TIMEOUT, message=message))


def _wait(
    rt: WorkerRuntime, record: JobRecord, active: ActiveJob, handle: RequestHandle, deadline: float
) -> EngineResult | JobOutcome:
    """Wait for the engine; the result, or how the job ended early.

    No Redis here: the stream pump writes the deltas and sets ``active.cancel`` / ``active.lost``
    (cancelling the engine request itself, which ends this wait); this thread wakes every
    ``WAIT_S`` for the flags only it acts on (release, time limit) and for flags set before the
    request was attached to the job.
    """
    engine = rt.running_engine()
    request_id = handle.request_id
    cancel_sent = False
    timeout = 0.0  # look at the flags at once: a cancel may have come before the request existed
    while True:
        try:
            return handle.result(timeout=timeout)
        except TimeoutError:
            pass
        except EngineLost as exc:
            return _engine_lost(record, exc)
        except EngineError as exc:
            log.exception("job %s: engine failed", record.id)
            error = JobError(type=JobErrorType.ENGINE_ERROR, message=str(exc))
            return _finish(rt, record, JobStatus.FAILED, error=error)
        if active.lost.is_set():
            engine.cancel(request_id)
            log.warning("job %s: lease lost; abandoning this run", record.id)
            return JobOutcome.LEASE_LOST
        now = time.monotonic()
        if now > deadline:
            engine.cancel(request_id)
            _drain(handle)
            return _timed_out(rt, record)
        if active.release.is_set() or active.pause.is_set():
            engine.cancel(request_id)
            _drain(handle)
            _flush_quietly(active)  # the next attempt resumes from what the stream holds
            return _park(rt, record) if not active.release.is_set() else _release(rt, record)
        if not cancel_sent and active.cancel.is_set():
            engine.cancel(request_id)  # the engine retires it next step; result says "cancelled"
            cancel_sent = True
        timeout = min(WAIT_S, deadline - now + 0.001)


def _engine_lost(record: JobRecord, exc: EngineLost) -> JobOutcome:
    """The engine process died under the job: not the job's failure. Nothing is written; the
    reaper requeues it when its lease expires (an attempt counted, so a job that kills engines
    ends ``worker_lost`` after ``max_attempts``)."""
    log.warning("job %s: %s; leaving it to the reaper", record.id, exc)
    return JobOutcome.ENGINE_LOST


def _drain(handle: RequestHandle, timeout: float = 10.0) -> None:
    with contextlib.suppress(TimeoutError, EngineError):
        handle.result(timeout=timeout)


def _finish(
    rt: WorkerRuntime,
    record: JobRecord,
    status: JobStatus,
    *,
    result: JobResult | None = None,
    error: JobError | None = None,
) -> JobOutcome:
    """Write the terminal state (retrying through Redis outages) while this worker owns the job."""
    store = rt.store
    rt.pump.discard(record.id)  # its stream is complete: the pump must not read our end as a loss

    finished_at = time.time()  # one value for every retry, so a write that ran is recognised

    def write() -> bool:
        return bool(
            store.finish(record.id, rt.worker_id, status, result=result, error=error, now=finished_at)
        )

    written = retry_transient(write, what=f"finish {record.id}", deadline_s=rt.finish_retry_s)
    if not written:
        log.warning("job %s: not finished by this worker (taken over or reaped)", record.id)
        return JobOutcome.LEASE_LOST
    notify_transition(store, store.get(record.id), f"job.{status.value}")
    return JobOutcome.finished(status)


def _flush_quietly(active: ActiveJob) -> None:
    """Write what the engine emitted before it stopped (best effort: an outage or a lost lease
    only means the next attempt regenerates those tokens)."""
    if active.writer is not None:
        with contextlib.suppress(LeaseLost, *TRANSIENT):
            active.writer.flush()


def _park(rt: WorkerRuntime, record: JobRecord) -> JobOutcome:
    """A pause was requested: the job leaves its slot and waits, ``paused``, for its resume."""
    rt.pump.discard(record.id)
    outcome = retry_transient(
        lambda: rt.store.park(record.id, rt.worker_id),
        what=f"pause {record.id}",
        deadline_s=rt.finish_retry_s,
    )
    if outcome.action == "paused":
        log.info("job %s: paused", record.id)
        return JobOutcome.PAUSED
    if outcome.action == "requeued":  # the pause was withdrawn before it took effect
        rt.send_generate(record.id, record.priority)
    return JobOutcome.released(outcome.action)


def _release(rt: WorkerRuntime, record: JobRecord) -> JobOutcome:
    """Warm shutdown ran out of grace: put the job back on the queue for another worker."""
    rt.pump.discard(record.id)
    outcome = retry_transient(
        lambda: rt.store.release(record.id, rt.worker_id),
        what=f"release {record.id}",
        deadline_s=rt.finish_retry_s,
    )
    if outcome.action == "requeued":
        rt.send_generate(record.id, record.priority)
        log.info("job %s: released back to the queue on shutdown", record.id)
    return JobOutcome.released(outcome.action)
