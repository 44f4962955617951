"""``AsyncJobStore``: the job store on ``redis.asyncio``, for the API.

Same scripts and semantics as ``sync.JobStore``: argument building and answer decoding are shared in
``ops.py``, and the operations both offer with more than one round trip are written once as flows
(``flow.py``, ``listing.py``) that this store drives with ``flow.run_async``. It offers the
client-side operations; the worker-side ones (claim, lease, append, finish, reap) live on the sync
store the workers use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from tnllm.config import Settings
from tnllm.protocol.jobs import GenerationParams, JobRecord, JobStatus
from tnllm.store import eta, flow, keys, listing, ops, quotas, scripts
from tnllm.store import pause as pausing
from tnllm.store.codec import record_from_hash
from tnllm.store.entries import StreamEntry, parse_entry
from tnllm.store.listing import ListPage
from tnllm.store.ops import CancelOutcome, CreateOutcome, WorkerInfo


class AsyncJobStore:
    """Job records and token streams in Redis, for asyncio callers. Unknown/expired ids → None."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        ops.check_decoded(client)
        # Any: redis-py types answers as bytes | str; ours are str (decode_responses=True).
        self.client: Any = client
        self.ttl = int(settings.result_ttl)
        self._scripts = {name: client.register_script(src) for name, src in scripts.ALL.items()}

    async def _run(self, call: ops.ScriptCall) -> Any:
        return await self._scripts[call.name](keys=call.keys, args=call.args)

    async def _drive(self, operation: flow.Flow) -> Any:
        return await flow.run_async(operation, self.client, self._scripts)

    async def create(
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
        """Store a queued job, its index entries and idempotency key in one atomic step.

        ``max_queued`` > 0 refuses (``full``) when that many jobs are queued. ``broker``: the
        commands publishing its Celery message (``protocol.celery.generate_commands``), run only
        when the job is created, in the same step.
        """
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
        return ops.parse_create(await self._run(call), call, body_hash)

    async def discard(self, job_id: str, owner: str, idempotency_key: str | None, body_hash: str) -> bool:
        """Undo ``create`` of a still-queued job whose Celery message could not be sent."""
        return bool(await self._run(ops.discard_call(job_id, owner, idempotency_key, body_hash)))

    async def admit(self, owner: str, job_id: str, rate_limit: int, token_quota: int) -> quotas.Admission:
        """Check ``owner``'s per-key limits for one more submission and count it when admitted
        (``quotas``; a limit of 0 is off)."""
        now = time.time()
        return quotas.parse_admit(
            await self._run(quotas.admit_call(owner, job_id, now, rate_limit, token_quota)), now
        )

    async def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None for an unknown or expired id."""
        return record_from_hash(await self.client.hgetall(keys.job(job_id)))

    async def queue_position(self, job_id: str) -> int | None:
        """Queued jobs that run before this one (0 = next), None when not queued."""
        rank = await self.client.zrank(keys.QUEUE, job_id)
        return None if rank is None else int(rank)

    async def queue_positions(self, job_ids: Sequence[str]) -> list[int | None]:
        """``queue_position`` of many jobs in one round trip."""
        if not job_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.zrank(keys.QUEUE, job_id)
        return [None if r is None else int(r) for r in await pipe.execute()]

    async def queue_depth(self) -> int:
        """Jobs waiting in the queue."""
        return int(await self.client.zcard(keys.QUEUE))

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Queued → cancelled at once; running → ``cancel_requested`` (the worker stops it)."""
        outcome: CancelOutcome = await self._drive(flow.cancel(job_id, self.ttl))
        return outcome

    async def pause(self, job_id: str) -> pausing.PauseOutcome:
        """Queued → paused; running → pause requested (its worker parks it); see ``store.pause``."""
        return pausing.parse(await self._run(pausing.pause_call(job_id)))

    async def resume(self, job_id: str) -> pausing.PauseOutcome:
        """Paused → queued (then send a Celery message); a pending pause request is withdrawn."""
        return pausing.parse(await self._run(pausing.resume_call(job_id, self.ttl)))

    async def eta(self, job_id: str) -> eta.Eta | None:
        """The job's queue position and estimated start/finish (``store.eta``); None: not queued or
        running, or no live worker."""
        result: eta.Eta | None = await self._drive(eta.estimate(job_id))
        return result

    async def read_stream(
        self, job_id: str, after: str = "0-0", block_ms: int | None = None, count: int | None = None
    ) -> list[StreamEntry]:
        """Stream entries after entry id ``after``, waiting up to ``block_ms`` when there are none."""
        answer = await self.client.xread({keys.stream(job_id): after}, count=count, block=block_ms)
        return [parse_entry(eid, f) for _, entries in answer or [] for eid, f in entries]

    async def list_jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> ListPage:
        """One page of ``owner``'s jobs, newest first (``listing.list_jobs``)."""
        page: ListPage = await self._drive(listing.list_jobs(owner, status, limit, cursor))
        return page

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is current."""
        found: list[WorkerInfo] = await self._drive(flow.workers())
        return found

    async def aof_enabled(self) -> bool:
        """Whether Redis runs with append-only persistence (``INFO persistence``)."""
        info = await self.client.info("persistence")
        return bool(int(info.get("aof_enabled", 0)))
