"""Sans-I/O store operations: generators that yield Redis requests and get their answers back.

An operation the sync and the asyncio store both offer is written once, here or in ``listing.py``,
as a generator (a ``Flow``) that yields ``Call`` / ``Batch`` / ``ops.ScriptCall`` / ``Sleep`` requests and
returns its result; ``run_sync`` and ``run_async`` drive it against a client, so its logic (several
round trips, retries, back-off) exists once. Single-command operations call the client directly. A
request that fails is thrown into the generator, so a flow handles Redis errors where it wants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tnllm.protocol.jobs import JobStatus
from tnllm.store import keys, ops, quotas
from tnllm.store import stats as jobstats
from tnllm.store.clients import RETRIES
from tnllm.store.ops import CancelKind, CancelOutcome, ScriptCall, WorkerInfo


@dataclass(frozen=True)
class Call:
    """One client command: ``client.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """Commands for one pipeline (answers in order). Any pipeline method can be queued on it, so the
    ``stats.add_*`` helpers fill it as they fill a real pipeline."""

    calls: list[Call] = field(default_factory=list)
    transaction: bool = False

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.calls.append(Call(method, args, kwargs))


@dataclass(frozen=True)
class Sleep:
    """Wait before the next request (a retry's backoff): ``time.sleep`` or ``asyncio.sleep``."""

    seconds: float


Request = Call | Batch | ScriptCall | Sleep
#: An operation: yields requests, is sent their answers, returns its result.
Flow = Generator[Request, Any, Any]
#: Registered scripts by name (``client.register_script`` of ``scripts.ALL``).
Scripts = Mapping[str, Any]


def run_sync(flow: Flow, client: Any, scripts: Scripts) -> Any:
    """Drive ``flow`` on a synchronous redis-py client."""

    def execute(req: Request) -> Any:
        if isinstance(req, Sleep):
            return time.sleep(req.seconds)
        if isinstance(req, ScriptCall):
            return scripts[req.name](keys=req.keys, args=req.args)
        if isinstance(req, Batch):
            pipe = client.pipeline(transaction=req.transaction)
            for c in req.calls:
                getattr(pipe, c.method)(*c.args, **c.kwargs)
            return pipe.execute() if req.calls else []
        return getattr(client, req.method)(*req.args, **req.kwargs)

    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            req = flow.throw(error) if error is not None else flow.send(answer)
        except StopIteration as stop:
            return stop.value
        try:
            answer, error = execute(req), None
        except Exception as exc:  # handed to the flow, which re-raises what it does not handle
            answer, error = None, exc


async def run_async(flow: Flow, client: Any, scripts: Scripts) -> Any:
    """Drive ``flow`` on a ``redis.asyncio`` client (the twin of ``run_sync``)."""

    async def execute(req: Request) -> Any:
        if isinstance(req, Sleep):
            return await asyncio.sleep(req.seconds)
        if isinstance(req, ScriptCall):
            return await scripts[req.name](keys=req.keys, args=req.args)
        if isinstance(req, Batch):
            pipe = client.pipeline(transaction=req.transaction)
            for c in req.calls:
                getattr(pipe, c.method)(*c.args, **c.kwargs)
            return await pipe.execute() if req.calls else []
        return await getattr(client, req.method)(*req.args, **req.kwargs)

    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            req = flow.throw(error) if error is not None else flow.send(answer)
        except StopIteration as stop:
            return stop.value
        try:
            answer, error = await execute(req), None
        except Exception as exc:  # handed to the flow, which re-raises what it does not handle
            answer, error = None, exc


def replayed_on_timeout(call: ScriptCall) -> Flow:
    """Run a script that recognises its own replay, sending it again (same arguments) when its
    reply timed out: the client retries connection errors only (``clients``), since most writes
    must not run twice, but this one may."""
    for attempt in range(RETRIES + 1):
        try:
            return (yield call)
        except RedisTimeoutError:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


def record_finished(
    job_key: str | None,
    status: str,
    now: float,
    reason: str | None = None,
    known: tuple[str | None, str | None, str | None] | None = None,
) -> Flow:
    """Count a terminal write in the cluster stats (``stats``), with run time and tokens read from
    the record (``job_key`` None: the job never ran) or ``known`` = (started_at, result JSON,
    owner) when the caller has them, and add its completion tokens to its owner's day
    (``quotas``). Best effort: a Redis error is logged."""
    try:
        started, result, owner = known or (None, None, None)
        if job_key is not None and known is None:
            started, result, owner = yield Call("hmget", (job_key, ["started_at", "result", "owner"]))
        prompt, completion = jobstats.usage(result)
        batch = Batch()
        run_s = jobstats.since(started, now)
        jobstats.add_job_finished(
            batch, status, run_s, reason=reason, prompt_tokens=prompt, completion_tokens=completion
        )
        quotas.add_usage(batch, owner or "", completion, now)
        yield batch
    except RedisError as exc:  # metrics never fail a transition that already happened
        jobstats.log_failure("end", exc)


def record_started(job_key: str, now: float, created: str | None = None) -> Flow:
    """Observe a claimed job's time from submission (``created``, else read) to this start. Best
    effort, as above."""
    try:
        if created is None:
            created = yield Call("hget", (job_key, "created_at"))
        queued = jobstats.since(created, now)
        if queued is not None:
            batch = Batch()
            jobstats.add_job_started(batch, queued)
            yield batch
    except RedisError as exc:
        jobstats.log_failure("start", exc)


def cancel(job_id: str, ttl: int) -> Flow:
    """Queued → cancelled at once; running → ``cancel_requested`` (the worker stops it).

    A reply lost to a timeout is replayed: CANCEL recognises its own replay by ``now``, so the
    caller gets ``cancelled`` (not ``terminal``) for the job it cancelled.
    """
    now = time.time()
    outcome: CancelOutcome = ops.parse_cancel(
        (yield from replayed_on_timeout(ops.cancel_call(job_id, ttl, now)))
    )
    if outcome.kind is CancelKind.CANCELLED:
        yield from record_finished(None, JobStatus.CANCELLED.value, now)
    return outcome


def workers() -> Flow:
    """Workers whose heartbeat is current."""
    ids = yield Call("zrangebyscore", (keys.WORKERS, time.time(), "+inf"))
    hashes = yield Batch([Call("hgetall", (keys.worker(worker_id),)) for worker_id in ids or []])
    return [WorkerInfo.from_hash(h) for h in hashes if h]
