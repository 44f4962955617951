"""Redis records of state reuse: each succeeded job's conversation, and the pinned prefixes.

| key | type | holds |
| --- | --- | --- |
| ``tnllm:conv:{job_id}`` | string | ``Conversation`` JSON (ids, turns, reply, worker); TTL ``result_ttl`` |
| ``tnllm:prefix:{id}`` | string | ``PrefixRecord`` JSON; TTL ``result_ttl`` |
| ``tnllm:prefixes`` | zset | prefix ids scored by their expiry (epoch s): what every worker pins |

Workers write conversations (``save_conversation``, before the job's terminal write, so a job seen
succeeded has one) and read them for ``continue_from``; the API reads them to check and route a
continuation, and writes and deletes prefixes; workers pin what ``live_prefixes`` lists.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from tnllm.protocol.jobs import ChatMessage, Conversation
from tnllm.store import keys

PREFIXES = keys.PREFIX + "prefixes"


def conversation_key(job_id: str) -> str:
    return f"{keys.PREFIX}conv:{job_id}"


def prefix_key(prefix_id: str) -> str:
    return f"{keys.PREFIX}prefix:{prefix_id}"


class PrefixRecord(BaseModel):
    """A pinned prefix as stored: who made it and what it is (``prompt`` or ``messages``)."""

    id: str
    owner: str
    created_at: datetime
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tokens: int | None = None


def _conversation(raw: str | None) -> Conversation | None:
    if raw is None:
        return None
    try:
        return Conversation.model_validate_json(raw)
    except ValidationError:  # written by another version: no state to reuse, not an error
        return None


# --- conversations ------------------------------------------------------------------------------
def save_conversation(client: Any, job_id: str, conv: Conversation, ttl: int) -> None:
    """Store a succeeded job's conversation for ``ttl`` seconds (sync client)."""
    client.set(conversation_key(job_id), conv.model_dump_json(), ex=max(1, int(ttl)))


def load_conversation(client: Any, job_id: str) -> Conversation | None:
    """A job's stored conversation, or None (sync client)."""
    return _conversation(client.get(conversation_key(job_id)))


async def aload_conversation(client: Any, job_id: str) -> Conversation | None:
    """``load_conversation`` on a redis.asyncio client."""
    return _conversation(await client.get(conversation_key(job_id)))


async def aworker_alive(client: Any, worker_id: str) -> bool:
    """Whether ``worker_id``'s heartbeat is current (redis.asyncio client)."""
    return bool(await client.exists(keys.worker(worker_id)))


# --- pinned prefixes ----------------------------------------------------------------------------
async def asave_prefix(client: Any, record: PrefixRecord, ttl: int) -> None:
    """Store a prefix and list it for the workers (redis.asyncio client)."""
    pipe = client.pipeline(transaction=True)
    pipe.set(prefix_key(record.id), record.model_dump_json(), ex=max(1, int(ttl)))
    pipe.zadd(PREFIXES, {record.id: time.time() + ttl})
    pipe.expire(PREFIXES, max(1, int(ttl)))
    await pipe.execute()


async def aload_prefix(client: Any, prefix_id: str) -> PrefixRecord | None:
    raw = await client.get(prefix_key(prefix_id)) if len(prefix_id) <= 128 else None
    return None if raw is None else PrefixRecord.model_validate_json(raw)


async def adelete_prefix(client: Any, prefix_id: str) -> None:
    """Forget a prefix (the workers unpin it at their next heartbeat)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(prefix_key(prefix_id))
    pipe.zrem(PREFIXES, prefix_id)
    await pipe.execute()


def live_prefixes(client: Any) -> dict[str, PrefixRecord]:
    """Every prefix to pin now, by id (sync client; expired ones are dropped from the list)."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(PREFIXES, "-inf", now)
    pipe.zrange(PREFIXES, 0, -1)
    _, ids = pipe.execute()
    if not ids:
        return {}
    raws = client.mget([prefix_key(i) for i in ids])
    out: dict[str, PrefixRecord] = {}
    for raw in raws:
        if raw is None:
            continue
        try:
            record = PrefixRecord.model_validate_json(raw)
        except ValidationError:
            continue
        out[record.id] = record
    return out
