"""Webhook state in Redis: each job's delivery log (in the job record) and the schedule of attempts.

Keys (prefix ``tnllm:``):

* ``job:{id}`` (the job store's hash): ``webhook`` = ``{"url", "events"}`` written when the job is
  created; this module adds ``wh:n`` (number of deliveries), ``wh:d:{i}`` = delivery ``i``
  ``{"event", "webhook_id", "state", "attempts", "next_attempt_at"}`` and ``wh:once:{event}`` (a
  terminal event is enqueued once). Each write is one field under one script, so it never races the
  job store's own writes, and the log lives and expires with the job.
* ``webhook:body:{id}`` (hash ``i`` -> body, TTL ``result_ttl``): the exact JSON body of delivery
  ``i``, fixed when the event happened so every retry sends the same bytes (kept out of the job hash:
  reading a job should not read every body again).
* ``webhooks:schedule`` (sorted set): member ``{job_id}|{i}`` for every delivery still pending,
  scored with the epoch-milliseconds at which something must next happen to it. Nothing is removed
  from it before the delivery is final, so a killed worker loses nothing: the pump (any webhook
  worker) dispatches members whose time has come. A dispatch or a running attempt pushes the score
  into the future (a lease) and writes a fresh token (``webhooks:token`` counter) into
  ``webhooks:leases`` (hash member -> token). A task must present the current token to attempt and
  to write the log, so a stale or duplicate Celery message (a dead worker's, redelivered after the
  broker's visibility timeout) can neither send nor log anything.
* ``webhooks:wake`` (list of at most one element): pokes the pump when an event is enqueued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from tnllm.protocol.webhooks import DELIVERY_PREFIX, build_body, iso, new_entry, render_webhook
from tnllm.webhooks.events import TERMINAL_EVENTS

__all__ = ["AsyncWebhookStore", "Delivery", "WebhookStore", "iso", "now_ms", "split_member"]

PREFIX = "tnllm:"
SCHEDULE_KEY = PREFIX + "webhooks:schedule"
LEASES_KEY = PREFIX + "webhooks:leases"
TOKEN_KEY = PREFIX + "webhooks:token"
WAKE_KEY = PREFIX + "webhooks:wake"


def job_key(job_id: str) -> str:
    """The job store's record hash (``tnllm.store.keys.job``)."""
    return f"{PREFIX}job:{job_id}"


def body_key(job_id: str) -> str:
    return f"{PREFIX}webhook:body:{job_id}"


def member(job_id: str, index: int) -> str:
    return f"{job_id}|{index}"


def split_member(value: str) -> tuple[str, int]:
    job_id, _, index = value.rpartition("|")
    return job_id, int(index)


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# Lua: every step that touches the schedule is one atomic script.

# KEYS: job, bodies, schedule, wake; ARGV: event, entry, body, now_ms, ttl, once (1|0), job_id
_ENQUEUE = """
local cfg = redis.call('HGET', KEYS[1], 'webhook')
if not cfg or cfg == '' then return -1 end
local subscribed = false
for _, e in ipairs(cjson.decode(cfg)['events'] or {}) do if e == ARGV[1] then subscribed = true end end
if not subscribed then return -2 end
if ARGV[6] == '1' and redis.call('HSETNX', KEYS[1], 'wh:once:' .. ARGV[1], '1') == 0 then return -3 end
local i = redis.call('HINCRBY', KEYS[1], 'wh:n', 1) - 1
redis.call('HSET', KEYS[1], 'wh:d:' .. i, ARGV[2])
redis.call('HSET', KEYS[2], tostring(i), ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[7] .. '|' .. i)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return i
"""

# KEYS: job, bodies, schedule, wake; ARGV: now_ms, ttl, job_id
_REDELIVER = """
local cfg = redis.call('HGET', KEYS[1], 'webhook')
if not cfg or cfg == '' then return -1 end
local n = tonumber(redis.call('HGET', KEYS[1], 'wh:n') or '0')
if n == 0 then return -2 end
local body = redis.call('HGET', KEYS[2], tostring(n - 1))
if not body then return -4 end
local last = cjson.decode(redis.call('HGET', KEYS[1], 'wh:d:' .. (n - 1)))
local entry = '{"event":' .. cjson.encode(last['event'])
  .. ',"webhook_id":' .. cjson.encode(last['webhook_id'])
  .. ',"state":"pending","attempts":[],"next_attempt_at":null}'
redis.call('HINCRBY', KEYS[1], 'wh:n', 1)
redis.call('HSET', KEYS[1], 'wh:d:' .. n, entry)
redis.call('HSET', KEYS[2], tostring(n), body)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3] .. '|' .. n)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return n
"""

# due members -> leased for ARGV[2] ms under a fresh token; returns {member, token, member, token, ...}
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  local token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[3], m, token)
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m)
  out[#out + 1] = m
  out[#out + 1] = tostring(token)
end
return out
"""

# a task takes over the lease it was dispatched with (new token, ARGV[3] = lease end); false if stale
_CLAIM_ATTEMPT = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return false end
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], ARGV[1], token)
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return tostring(token)
"""

# record an attempt and reschedule (ARGV[5] = next due ms) or finish (ARGV[5] = ''), if still leased
_FINISH = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) return -1 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1]) end
return 1
"""


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _enqueue_call(job_id: str, event: str, data: Mapping[str, Any], ttl: int) -> tuple[list[str], list[Any]]:
    at = now_ms()
    once = "1" if event in TERMINAL_EVENTS else "0"
    keys = [job_key(job_id), body_key(job_id), SCHEDULE_KEY, WAKE_KEY]
    args = [event, json.dumps(new_entry(event)), build_body(event, data, at), at, ttl, once, job_id]
    return keys, args


@dataclass(frozen=True)
class Delivery:
    """What one attempt needs: the URL, the log entry and the fixed body."""

    job_id: str
    index: int
    url: str
    entry: dict[str, Any]
    body: str


class WebhookStore:
    """Synchronous access (webhook worker, GPU worker transitions). Any redis-py client works."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._claim_attempt = redis.register_script(_CLAIM_ATTEMPT)
        self._finish = redis.register_script(_FINISH)

    def enqueue(self, job_id: str, event: str, data: Mapping[str, Any]) -> int | None:
        """Schedule ``event`` for delivery now; the delivery index, or None when the job has no
        webhook, is not subscribed to ``event``, or already enqueued this terminal event.

        ``data`` is the job object (``JobPublic`` as JSON) after the transition.
        """
        keys, args = _enqueue_call(job_id, event, data, self.ttl)
        index = int(self._enqueue(keys=keys, args=args))
        return index if index >= 0 else None

    def load(self, job_id: str) -> dict[str, Any] | None:
        """The job's ``"webhook"`` object (None: no such job or no webhook)."""
        return render_webhook(_decode(self.redis.hgetall(job_key(job_id))))

    def claim_due(self, lease_ms: int, limit: int) -> list[tuple[str, int]]:
        """Lease up to ``limit`` due deliveries for ``lease_ms``: ``[(member, token)]``."""
        keys = [SCHEDULE_KEY, TOKEN_KEY, LEASES_KEY]
        flat = self._claim_due(keys=keys, args=[now_ms(), lease_ms, limit])
        return [(_s(flat[k]), int(_s(flat[k + 1]))) for k in range(0, len(flat), 2)]

    def next_due_ms(self) -> int | None:
        head = self.redis.zrange(SCHEDULE_KEY, 0, 0, withscores=True)
        return int(head[0][1]) if head else None

    def claim_attempt(self, value: str, token: int, lease_ms: int) -> int | None:
        """Take over a dispatched delivery for one attempt; its new token, or None if ``token`` is stale."""
        keys = [SCHEDULE_KEY, LEASES_KEY, TOKEN_KEY]
        got = self._claim_attempt(keys=keys, args=[value, token, now_ms() + lease_ms])
        return int(_s(got)) if got else None

    def read(self, job_id: str, index: int) -> Delivery | None:
        config, entry = self.redis.hmget(job_key(job_id), ["webhook", f"{DELIVERY_PREFIX}{index}"])
        body = self.redis.hget(body_key(job_id), str(index))
        if not config or not entry or body is None:
            return None
        return Delivery(job_id, index, json.loads(_s(config))["url"], json.loads(_s(entry)), _s(body))

    def finish(self, value: str, token: int, entry: dict[str, Any], next_due_ms: int | None) -> int:
        """Write ``entry`` and reschedule it (``next_due_ms``) or retire it (None), if ``token`` still
        holds the lease: 1; 0 when it does not; -1 when the job is gone."""
        job_id, index = split_member(value)
        due: str | int = "" if next_due_ms is None else next_due_ms
        args: list[str | int] = [value, token, f"{DELIVERY_PREFIX}{index}", json.dumps(entry), due]
        return int(self._finish(keys=[SCHEDULE_KEY, job_key(job_id), LEASES_KEY], args=args))

    def drop(self, value: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(SCHEDULE_KEY, value)
        pipe.hdel(LEASES_KEY, value)
        pipe.execute()


class AsyncWebhookStore:
    """The API's side: enqueue (a queued job cancelled), redeliver, read."""

    def __init__(self, redis: AsyncRedis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._enqueue = redis.register_script(_ENQUEUE)
        self._redeliver = redis.register_script(_REDELIVER)

    async def enqueue(self, job_id: str, event: str, data: Mapping[str, Any]) -> int | None:
        """``WebhookStore.enqueue`` for async callers."""
        keys, args = _enqueue_call(job_id, event, data, self.ttl)
        index = int(await self._enqueue(keys=keys, args=args))
        return index if index >= 0 else None

    async def redeliver(self, job_id: str) -> int:
        """Send the job's last event again (same webhook-id and body) as a new delivery; its index.

        Raises ``LookupError`` (-> 409) when the job has no webhook or no event was enqueued yet.
        """
        keys = [job_key(job_id), body_key(job_id), SCHEDULE_KEY, WAKE_KEY]
        index = int(await self._redeliver(keys=keys, args=[now_ms(), self.ttl, job_id]))
        if index == -1:
            raise LookupError("this job has no webhook")
        if index == -2:
            raise LookupError("this job has no webhook event to redeliver yet")
        if index == -4:
            raise LookupError("the last webhook event of this job has expired")
        return index

    async def load(self, job_id: str) -> dict[str, Any] | None:
        return render_webhook(_decode(await self.redis.hgetall(job_key(job_id))))
