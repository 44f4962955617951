"""``JobStore``: the job store on the synchronous redis-py client (Celery workers, reaper, tests).

Every state transition is one Lua script (``lua/*.lua``, loaded by ``scripts.py``); argument
building and answer decoding are shared with the asyncio twin in ``aio.py`` through ``ops.py``, and
the operations both offer with more than one round trip are flows (``flow.py``, ``listing.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from tnllm.config import Settings
from tnllm.protocol.jobs import GenerationParams, JobError, JobErrorType, JobRecord, JobResult, JobStatus
from tnllm.store import eta, flow, keys, listing, ops, pause, scripts
from tnllm.store.clients import redis_client
from tnllm.store.codec import record_from_hash
from tnllm.store.entries import StreamEntry, parse_entry
from tnllm.store.listing import ListPage
from tnllm.store.ops import (
    AppendAck,
    CancelOutcome,
    ClaimOutcome,
    CreateOutcome,
    LeaseStatus,
    ReapAction,
    ReapOutcome,
    WorkerInfo,
)


class JobStore:
    """Job records, leases and token streams in Redis, for synchronous callers.

    Unknown or expired ids give None (never a made-up record).
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        ops.check_decoded(client)
        # Any: redis-py types answers as bytes | str; ours are str (decode_responses=True).
        self.client: Any = client
        self.ttl = int(settings.result_ttl)
        self.lease_ttl = float(settings.lease_ttl)
        self.max_attempts = int(settings.max_attempts)
        self._scripts = {name: client.register_script(src) for name, src in scripts.ALL.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """Connect to ``settings.redis_url``."""
        if not settings.redis_url:
            raise ValueError("TNLLM_REDIS_URL is not set")
        options = settings.redis_socket_options()
        client = redis_client(settings.redis_url, sentinel_master=settings.redis_sentinel_master, **options)
        return cls(client, settings)

    def _run(self, call: ops.ScriptCall) -> Any:
        return self._scripts[call.name](keys=call.keys, args=call.args)

    def _drive(self, operation: flow.Flow) -> Any:
        return flow.run_sync(operation, self.client, self._scripts)

    def _run_many(self, calls: Sequence[ops.ScriptCall]) -> list[Any]:
        """Run script calls in one non-transactional pipeline (one round trip, plus SCRIPT EXISTS).

        A connection-level error (Redis down) raises; a script that failed on its own gives its
        exception object in its place, so one bad job cannot hide the others' answers.
        """
        if not calls:
            return []
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            self._scripts[call.name](keys=call.keys, args=call.args, client=pipe)
        return list(pipe.execute(raise_on_error=False))

    # --- creation (the API uses the async twin; kept here for tools and tests) ---------------
    def create(
        self,
        *,
        job_id: str,
        owner: str,
        params: GenerationParams,
        priority: int = 0,
        metadata: Mapping[str, Any] | None = None,
        max_queued: int = 0,
        idempotency_key: str | None = None,
        body_hash: str = "",
        webhook: Mapping[str, Any] | None = None,
        broker: Sequence[tuple[str, str, str]] = (),
    ) -> CreateOutcome:
        """Store a queued job (and its idempotency key) atomically; see ``ops.CreateOutcome``.
        ``broker``: commands publishing its Celery message, run in the same step when created."""
        call = ops.create_call(
            job_id=job_id,
            owner=owner,
            params=params,
            priority=priority,
            metadata=metadata or {},
            ttl=self.ttl,
            max_queued=max_queued,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            webhook=webhook,
            now=time.time(),
            broker=broker,
        )
        return ops.parse_create(self._run(call), call, body_hash)

    # --- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None for an unknown or expired id."""
        return record_from_hash(self.client.hgetall(keys.job(job_id)))

    def queue_position(self, job_id: str) -> int | None:
        """Queued jobs that run before this one (0 = next), None when not queued."""
        rank = self.client.zrank(keys.QUEUE, job_id)
        return None if rank is None else int(rank)

    def queue_depth(self) -> int:
        """Jobs waiting in the queue."""
        return int(self.client.zcard(keys.QUEUE))

    def cancel_requested(self, job_id: str) -> bool:
        """True once a cancel was asked for this job."""
        return self.client.hget(keys.job(job_id), "cancel_requested") == "1"

    def eta(self, job_id: str) -> eta.Eta | None:
        """The job's queue position and estimated start/finish (``store.eta``)."""
        result: eta.Eta | None = self._drive(eta.estimate(job_id))
        return result

    def read_stream(
        self, job_id: str, after: str = "0-0", block_ms: int | None = None, count: int | None = None
    ) -> list[StreamEntry]:
        """Stream entries after entry id ``after`` (waiting up to ``block_ms`` when there are none)."""
        answer = self.client.xread({keys.stream(job_id): after}, count=count, block=block_ms)
        return [parse_entry(eid, f) for _, entries in answer or [] for eid, f in entries]

    def list_jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> ListPage:
        """One page of ``owner``'s jobs, newest first (``listing.list_jobs``)."""
        page: ListPage = self._drive(listing.list_jobs(owner, status, limit, cursor))
        return page

    # --- worker side ---------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, *, now: float | None = None) -> ClaimOutcome:
        """CAS queued → running for ``worker_id`` (lease, attempt += 1, started_at).

        Only one caller ever wins; a duplicate delivery of a running or terminal job loses. A caller
        that retries after a transient error passes the same ``now`` each time: a claim that had
        already run answers "won" again instead of "lost".
        """
        now = time.time() if now is None else now
        raw = self._run(ops.claim_call(job_id, worker_id, self.lease_ttl, self.ttl, now))
        outcome = ops.parse_claim(raw)
        if outcome.won:
            created = raw[2] if len(raw) > 2 else None  # CLAIM answers it: no read for the statistic
            self._drive(flow.record_started(keys.job(job_id), now, created))
        return outcome

    def renew_lease(self, job_id: str, worker_id: str) -> LeaseStatus:
        """Extend the lease of a job this worker runs; says whether it still owns it and if a
        cancel was requested."""
        return ops.parse_renew(self._run(ops.renew_call(job_id, worker_id, self.lease_ttl)))

    def renew_leases(self, job_ids: Sequence[str], worker_id: str) -> dict[str, LeaseStatus | Exception]:
        """``renew_lease`` for many jobs in one pipeline; a job whose script failed maps to the error."""
        calls = [ops.renew_call(job_id, worker_id, self.lease_ttl) for job_id in job_ids]
        return {
            job_id: raw if isinstance(raw, Exception) else ops.parse_renew(raw)
            for job_id, raw in zip(job_ids, self._run_many(calls), strict=True)
        }

    def lease_alive(self, job_id: str) -> bool:
        """True while the job's lease key exists."""
        return bool(self.client.exists(keys.lease(job_id)))

    def append(
        self,
        job_id: str,
        worker_id: str,
        *texts: str,
        seq: int = 0,
        deltas: str = "",
        ids: Sequence[int] = (),
    ) -> list[str]:
        """Append token deltas to the job's stream; returns the entry ids, or [] when the caller no
        longer owns the running job (then it must stop generating).

        ``seq`` > 0 numbers the flush (per attempt, increasing; the same number on every retry of
        the same text): a number applied already writes nothing and answers
        ``[ops.ALREADY_APPLIED]``, so a replay after a lost reply cannot write the text twice.
        ``deltas`` (with one text: choice 0's) gives the entry its per-choice deltas
        (``entries.pack_deltas``); ``ids``: choice 0's token ids the texts came from (stored with
        the last entry; a requeued job resumes from them).
        """
        if not texts:
            return []
        return list(self._run(ops.append_call(job_id, worker_id, texts, self.ttl, seq, deltas, ids)))

    def append_many(
        self,
        worker_id: str,
        texts: Mapping[str, str],
        seqs: Mapping[str, int] | None = None,
        ids: Mapping[str, Sequence[int]] | None = None,
        deltas: Mapping[str, str] | None = None,
    ) -> dict[str, AppendAck]:
        """One fenced append per job in ONE script call ({job_id: text}, '' = nothing to write):
        per job, whether ``worker_id`` still owns it (if not, nothing was written: stop generating),
        whether its text is in the stream, and whether a cancel was requested. ``seqs`` numbers each
        job's flush as for ``append``: a number applied already counts as written (nothing written
        again), so a retried call is safe; ``ids`` {job_id: choice 0's token ids of its text} (a job
        with ids but no text is written too). ``deltas`` gives a job's entry its per-choice deltas
        (``entries.pack_deltas``; its text is then choice 0's). Raises when Redis is unreachable."""
        if not texts:
            return {}
        call = ops.append_many_call(worker_id, texts, self.ttl, seqs, ids, deltas)
        return ops.parse_append_many(self._run(call), list(texts))

    def park(self, job_id: str, worker_id: str) -> ReapOutcome:
        """Take a running job whose pause was requested out of its slot (``paused``); ``requeued``
        when the pause was withdrawn meanwhile (the caller sends a new Celery message)."""
        now = time.time()
        outcome = ops.parse_reap(self._run(pause.park_call(job_id, worker_id, self.ttl, now)))
        if outcome.action is ReapAction.CANCELLED:
            self._drive(flow.record_finished(keys.job(job_id), JobStatus.CANCELLED.value, now))
        return outcome

    def streamed(self, job_id: str) -> list[StreamEntry]:
        """Every entry of the job's stream (a new attempt resumes from its token entries)."""
        return [parse_entry(eid, f) for eid, f in self.client.xrange(keys.stream(job_id))]

    def reset_stream(self, job_id: str, worker_id: str, reason: str) -> bool:
        """The owner voids the text streamed so far (SSE ``reset``); False when not the owner."""
        stream_keys = [keys.job(job_id), keys.stream(job_id)]
        call = ops.ScriptCall("reset_stream", stream_keys, [worker_id, self.ttl, reason])
        return bool(self._run(call))

    def finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobStatus,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        now: float | None = None,
    ) -> bool:
        """Write the terminal state if ``worker_id`` still owns the running job; False otherwise
        (another worker took it over, or it was reaped): then nothing is written. As with
        ``claim``, a retry with the same ``now`` answers True for a write that had already run."""
        now = time.time() if now is None else now
        call = ops.finish_call(job_id, worker_id, status, result, error, self.ttl, now)
        raw = self._run(call)
        done = bool(int(raw[0]))
        if done:
            reason = error.type if error else None
            # FINISH answers started_at and owner, and we wrote the result: the statistics read nothing
            known = (raw[2] or None, str(call.args[4]) or None, raw[3] or None) if len(raw) > 3 else None
            self._drive(flow.record_finished(keys.job(job_id), status.value, now, reason, known))
        return done

    def cancel(self, job_id: str) -> CancelOutcome:
        """Queued → cancelled at once; running → ``cancel_requested`` (and a notification)."""
        outcome: CancelOutcome = self._drive(flow.cancel(job_id, self.ttl))
        return outcome

    def release(self, job_id: str, worker_id: str) -> ReapOutcome:
        """Hand a running job back to the queue on a clean shutdown (the attempt is not counted).
        ``requeued``: the caller must send a new Celery message."""
        now = time.time()
        outcome = ops.parse_reap(self._run(ops.release_call(job_id, worker_id, self.ttl, now)))
        if outcome.action is ReapAction.CANCELLED:
            self._drive(flow.record_finished(keys.job(job_id), JobStatus.CANCELLED.value, now))
        return outcome

    # --- reaper --------------------------------------------------------------------------------
    def expired_leases(self, limit: int = 1000) -> list[str]:
        """Running jobs whose lease key is gone (their worker died or stalled)."""
        ids = self.client.zrange(keys.RUNNING, 0, limit - 1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.lease(job_id))
        return [job_id for job_id, alive in zip(ids, pipe.execute(), strict=True) if not alive]

    def reaper_gate(self, gap: float, grace: float) -> float:
        """Note one reaper round; returns the seconds reaping must still wait (0: reap now).

        A round that finds the previous round of any worker more than ``gap`` seconds old (Redis
        was down or unreachable) starts a wait of ``grace`` seconds, so that live workers renew
        the leases that expired during the outage before the reaper judges them
        (``lua/reap_gate.lua``; server time, the clock leases expire on)."""
        args: list[str | int | float] = [int(gap * 1000), int(grace * 1000), self.ttl]
        call = ops.ScriptCall("reap_gate", [keys.REAPER_CLOCK, keys.REAPER_GRACE], args)
        return max(0.0, int(self._run(call)) / 1000)

    def reap(self, job_id: str) -> ReapOutcome:
        """For a running job whose lease expired: requeue it, or fail it with ``worker_lost`` once
        it used ``max_attempts``. ``requeued``: the caller must send a new Celery message."""
        now = time.time()
        outcome = ops.parse_reap(self._run(ops.reap_call(job_id, self.max_attempts, self.ttl, now)))
        if outcome.action in (ReapAction.FAILED, ReapAction.CANCELLED):
            reason = JobErrorType.WORKER_LOST if outcome.action is ReapAction.FAILED else None
            self._drive(flow.record_finished(keys.job(job_id), outcome.action.value, now, reason))
        return outcome

    # --- workers -------------------------------------------------------------------------------
    def heartbeat_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Publish this worker's heartbeat for ``ttl`` seconds (readiness, ETA)."""
        info.updated_at = time.time()
        key = keys.worker(info.id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=info.to_hash())
        pipe.expire(key, max(1, int(ttl)))
        pipe.zadd(keys.WORKERS, {info.id: info.updated_at + ttl})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", f"({info.updated_at}")
        pipe.expire(keys.WORKERS, max(1, int(ttl)))
        pipe.execute()

    def remove_worker(self, worker_id: str) -> None:
        """Drop a worker's heartbeat at clean shutdown."""
        self.client.delete(keys.worker(worker_id))
        self.client.zrem(keys.WORKERS, worker_id)

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is current."""
        found: list[WorkerInfo] = self._drive(flow.workers())
        return found
