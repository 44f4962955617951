"""I/O-free halves of the store operations: build script arguments, decode script answers.

``sync.JobStore`` and ``aio.AsyncJobStore`` both call these (and the flows of ``flow.py`` and
``listing.py`` built on them), so the two clients cannot drift apart. Outcomes a caller branches on
are ``StrEnum`` members whose values are the scripts' own answer words.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tnllm.protocol.jobs import (
    GenerationParams,
    JobError,
    JobErrorType,
    JobRecord,
    JobResult,
    JobStatus,
    dumps,
)
from tnllm.protocol.tasks import MAX_PRIORITY
from tnllm.store import keys
from tnllm.store.codec import new_record_fields, record_from_hash


@dataclass(frozen=True)
class ScriptCall:
    """One invocation of a script of ``scripts.ALL``."""

    name: str
    keys: list[str]
    args: list[str | int | float]
    #: CREATE only: the hash it writes, so the caller gets the record without reading it back.
    record_fields: dict[str, str] | None = None


class CreateKind(StrEnum):
    """What ``create`` did: a new job, an idempotent replay (same key and body), a conflict (same
    key, other body), or nothing because the queue is at ``max_queued``."""

    CREATED = "created"
    REPLAYED = "replayed"
    CONFLICT = "conflict"
    FULL = "full"


@dataclass(frozen=True)
class CreateOutcome:
    """What ``create`` did (``kind``), with the job id and, when created, its record."""

    kind: CreateKind
    job_id: str | None = None
    queue_depth: int | None = None
    record: JobRecord | None = None  # ``created``: the stored record, as written
    queue_position: int | None = None  # ``created``: jobs ahead of it right after the write


@dataclass(frozen=True)
class ClaimOutcome:
    """``won`` is True only for the caller that moved the job queued → running."""

    won: bool
    status: JobStatus | None  # status found when lost (None: unknown/expired job)
    attempt: int = 0


@dataclass(frozen=True)
class LeaseStatus:
    """Answer of ``renew_lease``: does the caller still own the job, and was a cancel requested?"""

    owned: bool
    cancel_requested: bool


class CancelKind(StrEnum):
    """What ``cancel`` did."""

    CANCELLED = "cancelled"  # was queued (or this very call cancelled it): now terminal
    REQUESTED = "requested"  # running: the worker will stop it
    TERMINAL = "terminal"  # already finished; the outcome's ``status`` says how
    MISSING = "missing"


@dataclass(frozen=True)
class CancelOutcome:
    """What ``cancel`` did (``kind``) and the status it found or left."""

    kind: CancelKind
    status: JobStatus | None


class ReapAction(StrEnum):
    """What REAP or RELEASE did with one running job."""

    REQUEUED = "requeued"  # back in the queue: the caller must send a new Celery message!
    FAILED = "failed"  # worker_lost after max attempts
    CANCELLED = "cancelled"  # its cancel had been requested: now terminal
    ALIVE = "alive"  # its lease is current (reap only)
    SKIPPED = "skipped"  # not running any more
    MISSING = "missing"
    NOT_OWNER = "not_owner"  # the releasing worker does not own it (release only)
    PAUSED = "paused"  # its pause was requested: now paused (park only)


@dataclass(frozen=True)
class ReapOutcome:
    """What the reaper (or a clean shutdown's release) did with one running job."""

    action: ReapAction
    attempt: int = 0


@dataclass
class WorkerInfo:
    """A worker's heartbeat (hash ``tnllm:workers:{id}``), written every few seconds with a TTL."""

    id: str
    hostname: str = ""
    pid: int = 0
    model: str = ""
    model_loaded: bool = False
    slots: int = 0
    free_slots: int = 0
    tokens_per_s: float = 0.0
    queues: list[str] = field(default_factory=list)
    updated_at: float = 0.0
    metrics_port: int = 0  # the worker's Prometheus port (on `hostname`); 0 = not serving
    served_model: str = ""  # the name the OpenAI routes list it under (Settings.served_name())
    started_at: float = 0.0  # when the worker process started (epoch seconds)
    step_time_s: float = 0.0  # seconds per token of one slot under the recent load (ETAs)

    def to_hash(self) -> dict[str, str]:
        """Hash fields (strings) as stored."""
        return {
            "id": self.id,
            "hostname": self.hostname,
            "pid": str(self.pid),
            "model": self.model,
            "model_loaded": "1" if self.model_loaded else "0",
            "slots": str(self.slots),
            "free_slots": str(self.free_slots),
            "tokens_per_s": repr(float(self.tokens_per_s)),
            "queues": ",".join(self.queues),
            "updated_at": repr(float(self.updated_at or time.time())),
            "metrics_port": str(self.metrics_port),
            "served_model": self.served_model,
            "started_at": repr(float(self.started_at)),
            "step_time_s": repr(float(self.step_time_s)),
        }

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> WorkerInfo:
        """Decode a heartbeat hash."""
        return cls(
            id=h.get("id", ""),
            hostname=h.get("hostname", ""),
            pid=int(h.get("pid") or 0),
            model=h.get("model", ""),
            model_loaded=h.get("model_loaded") == "1",
            slots=int(h.get("slots") or 0),
            free_slots=int(h.get("free_slots") or 0),
            tokens_per_s=float(h.get("tokens_per_s") or 0.0),
            queues=[q for q in (h.get("queues") or "").split(",") if q],
            updated_at=float(h.get("updated_at") or 0.0),
            metrics_port=int(h.get("metrics_port") or 0),
            served_model=h.get("served_model", ""),
            started_at=float(h.get("started_at") or 0.0),
            step_time_s=float(h.get("step_time_s") or 0.0),
        )


def _placeholder_idem(owner: str) -> str:
    # Scripts take a fixed KEYS list; an unused idempotency slot still names a key of the owner.
    return keys.idempotency(owner, "-")


def create_call(
    *,
    job_id: str,
    owner: str,
    params: GenerationParams,
    priority: int,
    metadata: Mapping[str, Any],
    ttl: int,
    max_queued: int,
    idempotency_key: str | None,
    body_hash: str,
    webhook: Mapping[str, Any] | None,
    now: float,
    broker: Sequence[tuple[str, str, str]] = (),
) -> ScriptCall:
    """Arguments of the CREATE script; ``broker``: the commands that publish the job's Celery
    message (``protocol.celery.generate_commands``), run in the same script."""
    created_ms = int(now * 1000)
    score = keys.queue_score(priority, created_ms, MAX_PRIORITY)
    fields = new_record_fields(
        job_id=job_id,
        owner=owner,
        priority=priority,
        created=now,
        params=params,
        metadata=metadata,
        queue_score=score,
        webhook=webhook,
    )
    flat: list[str | int | float] = []
    for name, value in fields.items():
        flat += [name, value]
    idem_key = keys.idempotency(owner, idempotency_key) if idempotency_key else _placeholder_idem(owner)
    idem_value = f"{job_id}|{body_hash}" if idempotency_key else ""
    call_keys = [keys.job(job_id), keys.owner_jobs(owner), keys.QUEUE, idem_key]
    commands = _broker_args(broker, call_keys)
    return ScriptCall(
        "create",
        call_keys,
        [
            job_id,
            ttl,
            max_queued,
            int(now * 1_000_000),
            score,
            idem_value,
            min(keys.IDEMPOTENCY_TTL, ttl),
            int((now - ttl) * 1_000_000),
            len(broker),
            *commands,
            *flat,
        ],
        record_fields=fields,
    )


def _broker_args(broker: Sequence[tuple[str, str, str]], call_keys: list[str]) -> list[str]:
    """CREATE's command triples; list keys are appended to ``call_keys`` and named by index."""
    out: list[str] = []
    for name, target, value in broker:
        if name in ("lpush", "pexpire"):
            call_keys.append(target)
            target = str(len(call_keys))
        elif name != "publish":
            raise ValueError(f"unsupported broker command {name!r}")
        out += [name, target, value]
    return out


def parse_create(raw: Sequence[str], call: ScriptCall, body_hash: str) -> CreateOutcome:
    """Decode the CREATE answer of ``call``."""
    job_id = str(call.args[0])
    record = record_from_hash(call.record_fields or {})
    kind = raw[0]
    if kind == "created":
        position = int(raw[2]) if len(raw) > 2 and str(raw[2]).isdigit() else None
        return CreateOutcome(CreateKind.CREATED, job_id, record=record, queue_position=position)
    if kind == "full":
        return CreateOutcome(CreateKind.FULL, queue_depth=int(raw[1]))
    if kind == "replay":
        stored_id, _, stored_hash = raw[1].partition("|")
        if stored_id == job_id:  # our own first attempt, replayed by a client-side retry
            return CreateOutcome(CreateKind.CREATED, job_id, record=record)
        replayed = stored_hash == body_hash
        return CreateOutcome(CreateKind.REPLAYED if replayed else CreateKind.CONFLICT, stored_id)
    # "exists": with random 144-bit ids only our own first attempt (a retried call) can have
    # stored this id already.
    return CreateOutcome(CreateKind.CREATED, job_id, record=record)


def discard_call(job_id: str, owner: str, idempotency_key: str | None, body_hash: str) -> ScriptCall:
    """Arguments of DISCARD (undo a create whose Celery message could not be sent)."""
    idem_key = keys.idempotency(owner, idempotency_key) if idempotency_key else _placeholder_idem(owner)
    idem_value = f"{job_id}|{body_hash}" if idempotency_key else ""
    return ScriptCall(
        "discard", [keys.job(job_id), keys.owner_jobs(owner), keys.QUEUE, idem_key], [job_id, idem_value]
    )


def claim_call(job_id: str, worker_id: str, lease_ttl: float, ttl: int, now: float) -> ScriptCall:
    """Arguments of CLAIM."""
    return ScriptCall(
        "claim",
        [keys.job(job_id), keys.lease(job_id), keys.QUEUE, keys.RUNNING],
        [job_id, worker_id, repr(now), int(lease_ttl * 1000), ttl],
    )


def parse_claim(raw: Sequence[str]) -> ClaimOutcome:
    """Decode the CLAIM answer."""
    if raw[0] == "won":
        return ClaimOutcome(True, JobStatus.RUNNING, int(raw[1]))
    return ClaimOutcome(False, JobStatus(raw[1]) if raw[0] == "lost" else None)


def renew_call(job_id: str, worker_id: str, lease_ttl: float) -> ScriptCall:
    """Arguments of RENEW."""
    return ScriptCall("renew", [keys.job(job_id), keys.lease(job_id)], [worker_id, int(lease_ttl * 1000)])


def parse_renew(raw: Sequence[int]) -> LeaseStatus:
    """Decode the RENEW answer."""
    return LeaseStatus(bool(int(raw[0])), bool(int(raw[1])))


#: APPEND's answer for a flush whose sequence number was applied already (nothing written again).
ALREADY_APPLIED = "applied"


def encode_ids(ids: Sequence[int]) -> str:
    """Token ids as a stream entry stores them (comma-separated)."""
    return ",".join(str(int(i)) for i in ids)


def append_call(
    job_id: str,
    worker_id: str,
    texts: Sequence[str],
    ttl: int,
    seq: int = 0,
    deltas: str = "",
    ids: Sequence[int] = (),
) -> ScriptCall:
    """Arguments of APPEND (``seq`` 0 = unnumbered, always written; ``deltas``, the packed
    per-choice deltas of a single text's entry, ``pack_deltas``; ``ids``, choice 0's token ids,
    go with the last text)."""
    if deltas and len(texts) != 1:
        raise ValueError("per-choice deltas go with exactly one text")
    stream_keys = [keys.job(job_id), keys.stream(job_id)]
    return ScriptCall("append", stream_keys, [worker_id, ttl, seq, deltas, encode_ids(ids), *texts])


@dataclass(frozen=True)
class AppendAck:
    """One job's answer of ``append_many``: still owned by the caller? its text written? cancel asked?"""

    owned: bool
    written: bool
    cancel_requested: bool
    pause_requested: bool = False


def append_many_call(
    worker_id: str,
    texts: Mapping[str, str],
    ttl: int,
    seqs: Mapping[str, int] | None = None,
    ids: Mapping[str, Sequence[int]] | None = None,
    deltas: Mapping[str, str] | None = None,
) -> ScriptCall:
    """Arguments of APPEND_MANY ({job_id: text}; '' = only check the fence and the flags;
    ``seqs`` {job_id: flush number}, a job without one is unnumbered; ``ids`` {job_id: choice 0's
    token ids of its text}; ``deltas`` {job_id: the entry's packed per-choice deltas}
    (``pack_deltas``), a job without them writes plain text)."""
    job_keys: list[str] = []
    for job_id in texts:
        job_keys += [keys.job(job_id), keys.stream(job_id)]
    numbers = [(seqs or {}).get(job_id, 0) for job_id in texts]
    tokens = [encode_ids((ids or {}).get(job_id, ())) for job_id in texts]
    args: list[str | int | float] = [worker_id, ttl, len(texts), *texts.values(), *numbers, *tokens]
    if deltas:
        args += [deltas.get(job_id, "") for job_id in texts]
    return ScriptCall("append_many", job_keys, args)


def parse_append_many(raw: Sequence[int], job_ids: Sequence[str]) -> dict[str, AppendAck]:
    """Decode the APPEND_MANY answer (one code per job, in order)."""
    acks: dict[str, AppendAck] = {}
    for job_id, value in zip(job_ids, raw, strict=True):
        code = int(value)
        acks[job_id] = AppendAck(
            owned=code != 0,
            written=code & 3 == 1,
            cancel_requested=bool(code & 4),
            pause_requested=bool(code & 8),
        )
    return acks


def finish_call(
    job_id: str,
    worker_id: str,
    status: JobStatus,
    result: JobResult | None,
    error: JobError | None,
    ttl: int,
    now: float,
) -> ScriptCall:
    """Arguments of FINISH."""
    if not status.terminal:
        raise ValueError(f"finish needs a terminal status, got {status}")
    return ScriptCall(
        "finish",
        [keys.job(job_id), keys.lease(job_id), keys.RUNNING, keys.stream(job_id)],
        [
            job_id,
            worker_id,
            status.value,
            repr(now),
            result.model_dump_json() if result else "",
            error.model_dump_json() if error else "",
            ttl,
            keys.FINISHED_CHANNEL,
        ],
    )


def cancel_call(job_id: str, ttl: int, now: float) -> ScriptCall:
    """Arguments of CANCEL."""
    return ScriptCall(
        "cancel",
        [keys.job(job_id), keys.QUEUE, keys.stream(job_id)],
        [job_id, repr(now), ttl, keys.FINISHED_CHANNEL, keys.CANCEL_CHANNEL],
    )


def parse_cancel(raw: Sequence[str]) -> CancelOutcome:
    """Decode the CANCEL answer."""
    return CancelOutcome(CancelKind(raw[0]), JobStatus(raw[1]) if raw[1] else None)


def _requeue_keys(job_id: str) -> list[str]:
    return [keys.job(job_id), keys.lease(job_id), keys.QUEUE, keys.RUNNING, keys.stream(job_id)]


def reap_call(job_id: str, max_attempts: int, ttl: int, now: float) -> ScriptCall:
    """Arguments of REAP (lease expired: requeue, or fail with worker_lost after max_attempts)."""
    error = JobError(
        type=JobErrorType.WORKER_LOST,
        message=f"the worker running this job stopped {max_attempts} time(s); giving up",
    )
    return ScriptCall(
        "reap",
        _requeue_keys(job_id),
        [job_id, repr(now), ttl, keys.FINISHED_CHANNEL, max_attempts, dumps(error.model_dump())],
    )


def release_call(job_id: str, worker_id: str, ttl: int, now: float) -> ScriptCall:
    """Arguments of RELEASE (the owner hands a running job back on a clean shutdown)."""
    return ScriptCall(
        "release", _requeue_keys(job_id), [job_id, repr(now), ttl, keys.FINISHED_CHANNEL, worker_id]
    )


def parse_reap(raw: Sequence[str]) -> ReapOutcome:
    """Decode the REAP / RELEASE answer."""
    attempt = int(raw[1]) if raw[1].lstrip("-").isdigit() else 0
    return ReapOutcome(ReapAction(raw[0]), attempt)


def check_decoded(client: Any) -> None:
    """The store needs a client built with ``decode_responses=True``."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if not kwargs.get("decode_responses"):
        raise ValueError("the job store needs a Redis client created with decode_responses=True")
