"""Redis records of the Batch API: files' metadata, batch objects, each batch's jobs, the set of
batches still to finalize, and a short lock so one API process finalizes a batch once.

| key | type | holds |
| --- | --- | --- |
| ``tnllm:file:{id}`` | string | the file object (JSON) plus ``owner`` |
| ``tnllm:files:{owner}`` | zset | file ids by creation time (µs), for listing |
| ``tnllm:batch:{id}`` | string | the batch object (JSON) plus ``owner`` |
| ``tnllm:batch:{id}:jobs`` | list | per request (JSON): its job id, or the error that kept it from one |
| ``tnllm:batches:{owner}`` | zset | batch ids by creation time (µs) |
| ``tnllm:batches:active`` | set | batches not yet final (the API's finalizer scans it) |
| ``tnllm:batch:{id}:lock`` | string | the API process submitting or finalizing it (TTL ``lease_ttl``) |
| ``tnllm:job:{batch id}`` | hash | only ``webhook`` (+ its delivery log): the batch's callback, |
| | | delivered by the job webhooks' machinery (no ``status``: never read as a job) |

The objects are opaque JSON here (their shape is the API's); every key gets the store's TTL.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import WatchError

from tnllm.store import keys

ACTIVE = keys.PREFIX + "batches:active"


def file_key(file_id: str) -> str:
    """The file object's key."""
    return f"{keys.PREFIX}file:{file_id}"


def batch_key(batch_id: str) -> str:
    """The batch object's key."""
    return f"{keys.PREFIX}batch:{batch_id}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class AsyncBatchStore:
    """Async access for the API (any redis.asyncio client with decoded responses)."""

    def __init__(self, client: AsyncRedis, ttl: int, lock_ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self.lock_ttl = max(1, int(lock_ttl))  # a dead holder's lock blocks the others this long

    async def _put(self, key: str, index: str, owner: str, obj: dict[str, Any]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, _dumps({"owner": owner, "object": obj}), ex=self.ttl)
            # scored when first stored, in µs: objects of the same second still list newest first
            pipe.zadd(index, {obj["id"]: time.time_ns() // 1000}, nx=True)
            pipe.expire(index, self.ttl)
            await pipe.execute()

    async def _get(self, key: str, owner: str) -> dict[str, Any] | None:
        raw = await self.client.get(key)
        if raw is None:
            return None
        stored = json.loads(raw)
        return dict(stored["object"]) if stored.get("owner") == owner else None

    async def _page(self, index: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        ids = [str(i) for i in await self.client.zrevrange(index, 0, -1)]
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        return ids[:limit], len(ids) > limit

    async def put_file(self, owner: str, obj: dict[str, Any]) -> None:
        """Store (or overwrite) a file object."""
        await self._put(file_key(obj["id"]), f"{keys.PREFIX}files:{owner}", owner, obj)

    async def get_file(self, file_id: str, owner: str) -> dict[str, Any] | None:
        """The file object, None when unknown or another owner's."""
        return await self._get(file_key(file_id), owner)

    async def list_files(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the owner's files, newest first, and whether more follow."""
        ids, more = await self._page(f"{keys.PREFIX}files:{owner}", after, limit)
        found = [await self.get_file(i, owner) for i in ids]
        return [f for f in found if f is not None], more

    async def delete_file(self, file_id: str, owner: str) -> None:
        """Forget a file object."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(file_id))
            pipe.zrem(f"{keys.PREFIX}files:{owner}", file_id)
            await pipe.execute()

    async def put_batch(self, owner: str, obj: dict[str, Any], *, active: bool) -> None:
        """Store a batch object; ``active`` keeps it in the finalizer's set."""
        await self._put(batch_key(obj["id"]), f"{keys.PREFIX}batches:{owner}", owner, obj)
        if active:
            await self.client.sadd(ACTIVE, obj["id"])
        else:
            await self.client.srem(ACTIVE, obj["id"])

    async def get_batch(self, batch_id: str, owner: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """(owner, batch object); None when unknown or (with ``owner``) another owner's."""
        raw = await self.client.get(batch_key(batch_id))
        if raw is None:
            return None
        stored = json.loads(raw)
        if owner is not None and stored.get("owner") != owner:
            return None
        return str(stored["owner"]), dict(stored["object"])

    async def list_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the owner's batches, newest first, and whether more follow."""
        ids, more = await self._page(f"{keys.PREFIX}batches:{owner}", after, limit)
        found = [await self.get_batch(i, owner) for i in ids]
        return [b[1] for b in found if b is not None], more

    async def add_requests(self, batch_id: str, items: Sequence[dict[str, Any]], token: str) -> bool:
        """Record what became of some of a batch's requests (JSON objects, in line order) and renew
        the lock, only while ``token`` still holds it (False otherwise: another process took over)."""
        key, lock = batch_key(batch_id) + ":jobs", batch_key(batch_id) + ":lock"
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(lock)
                if await pipe.get(lock) != token:
                    return False
                pipe.multi()
                if items:
                    pipe.rpush(key, *[_dumps(item) for item in items])
                    pipe.expire(key, self.ttl)
                pipe.expire(lock, self.lock_ttl)
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's request objects, in line order."""
        return [json.loads(r) for r in await self.client.lrange(batch_key(batch_id) + ":jobs", 0, -1)]

    async def active(self) -> list[str]:
        """Batches not yet final."""
        return sorted(str(i) for i in await self.client.smembers(ACTIVE))

    async def job_statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        """The status field of each job (None when its record is gone)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), "status")
            return [None if s is None else str(s) for s in await pipe.execute()]

    async def subscribe_webhook(self, batch_id: str, config: dict[str, Any]) -> None:
        """Give the batch a callback ``{"url", "events"}``: the webhook schedule delivers events of
        the hash ``job:{batch_id}`` (``tnllm.store.webhooks``), which holds no job fields."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(batch_id), "webhook", _dumps(config))
            pipe.expire(keys.job(batch_id), self.ttl)
            await pipe.execute()

    async def lock(self, batch_id: str) -> str | None:
        """Take the batch's lock; its token, or None when another process holds it."""
        token = secrets.token_hex(8)
        taken = await self.client.set(batch_key(batch_id) + ":lock", token, nx=True, ex=self.lock_ttl)
        return token if taken else None

    async def relock(self, batch_id: str, token: str) -> bool:
        """Renew the lock held with ``token``; False when it is no longer ours."""
        return await self.add_requests(batch_id, [], token)

    async def unlock(self, batch_id: str, token: str) -> None:
        """Release the lock if still ours."""
        key = batch_key(batch_id) + ":lock"
        if await self.client.get(key) == token:
            await self.client.delete(key)
