"""Webhook state in Redis: each job's delivery log and the schedule of due attempts.

Keys (prefix ``tnllm:``):

* ``webhook:{job_id}`` (hash, TTL ``result_ttl`` from the last write, so it outlives the job record):
  ``config`` = ``{"url", "events"}``; ``n`` = number of deliveries; ``d:{i}`` = delivery ``i``
  ``{"event", "webhook_id", "state", "attempts", "next_attempt_at"}`` (public); ``body:{i}`` = the
  exact JSON body, fixed when the event happened so every retry sends the same bytes;
  ``once:{event}`` marks a terminal event already enqueued (a job ends once).
* ``webhooks:schedule`` (sorted set): member ``{job_id}|{i}`` for every delivery still pending,
  scored with the epoch-milliseconds at which something must next happen to it. Nothing is removed
  from it before the delivery is final, so a killed worker loses nothing: the pump (any webhook
  worker) dispatches members whose time has come. A dispatch or a running attempt pushes the score
  into the future (a lease) and writes a fresh token (``webhooks:token`` counter) into
  ``webhooks:leases`` (hash member -> token). A task must present the current token to attempt and
  to write the log, so a stale or duplicate Celery message (a dead worker's, redelivered after the
  broker's visibility timeout) can neither send nor log anything.
* ``webhooks:wake`` (list of at most one element): pokes the pump when an event is enqueued.

The delivery log is a sibling of the job record rather than a field of it: each attempt writes one
hash field under the fence, and a job-store change cannot race a delivery update.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.webhooks.events import TERMINAL_EVENTS

PREFIX = "tnllm:"
SCHEDULE_KEY = PREFIX + "webhooks:schedule"
LEASES_KEY = PREFIX + "webhooks:leases"
TOKEN_KEY = PREFIX + "webhooks:token"
WAKE_KEY = PREFIX + "webhooks:wake"


def log_key(job_id: str) -> str:
    return f"{PREFIX}webhook:{job_id}"


def member(job_id: str, index: int) -> str:
    return f"{job_id}|{index}"


def split_member(value: str) -> tuple[str, int]:
    job_id, _, index = value.rpartition("|")
    return job_id, int(index)


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Lua: every step that touches the schedule is one atomic script.

_ENQUEUE = """
local cfg = redis.call('HGET', KEYS[1], 'config')
if not cfg then return -1 end
local subscribed = false
for _, e in ipairs(cjson.decode(cfg)['events']) do if e == ARGV[1] then subscribed = true end end
if not subscribed then return -2 end
if ARGV[6] == '1' and redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[1], '1') == 0 then return -3 end
local i = redis.call('HINCRBY', KEYS[1], 'n', 1) - 1
redis.call('HSET', KEYS[1], 'd:' .. i, ARGV[2], 'body:' .. i, ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[7] .. '|' .. i)
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
return i
"""

_REDELIVER = """
local cfg = redis.call('HGET', KEYS[1], 'config')
if not cfg then return -1 end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n == 0 then return -2 end
local last = cjson.decode(redis.call('HGET', KEYS[1], 'd:' .. (n - 1)))
local body = redis.call('HGET', KEYS[1], 'body:' .. (n - 1))
local entry = '{"event":' .. cjson.encode(last['event'])
  .. ',"webhook_id":' .. cjson.encode(last['webhook_id'])
  .. ',"state":"pending","attempts":[],"next_attempt_at":null}'
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'd:' .. n, entry, 'body:' .. n, body)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3] .. '|' .. n)
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
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
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[5] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1]) end
return 1
"""


# ---------------------------------------------------------------------------------------------
# pure helpers shared by the sync (worker) and async (API) stores


def new_entry(event: str) -> dict[str, Any]:
    """A fresh pending delivery with its own ``webhook_id`` (kept by every retry and redelivery)."""
    return {
        "event": event,
        "webhook_id": f"msg_{uuid.uuid4().hex}",
        "state": "pending",
        "attempts": [],
        "next_attempt_at": None,
    }


def build_body(event: str, data: dict[str, Any], at_ms: int) -> str:
    """The signed JSON body: ``{"type", "timestamp", "data"}``.

    ``data`` is the job object; its own ``webhook.deliveries`` is left out, since it changes with
    every attempt and would make the event describe its own delivery.
    """
    data = dict(data)
    if isinstance(data.get("webhook"), dict):
        data["webhook"] = {k: v for k, v in data["webhook"].items() if k != "deliveries"}
    return json.dumps(
        {"type": event, "timestamp": iso(at_ms), "data": data}, separators=(",", ":"), ensure_ascii=False
    )


def render(fields: dict[str, str]) -> dict[str, Any] | None:
    """A job's ``"webhook"`` object (``{"url", "events", "deliveries"}``) from its log hash."""
    if "config" not in fields:
        return None
    out: dict[str, Any] = json.loads(fields["config"])
    count = int(fields.get("n", "0"))
    out["deliveries"] = [json.loads(fields[f"d:{i}"]) for i in range(count) if f"d:{i}" in fields]
    return out


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


@dataclass(frozen=True)
class Delivery:
    """What one attempt needs: the URL, the log entry and the fixed body."""

    job_id: str
    index: int
    url: str
    entry: dict[str, Any]
    body: str


class WebhookStore:
    """Synchronous access (webhook worker, GPU worker tasks)."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._enqueue = redis.register_script(_ENQUEUE)
        self._redeliver = redis.register_script(_REDELIVER)
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._claim_attempt = redis.register_script(_CLAIM_ATTEMPT)
        self._finish = redis.register_script(_FINISH)

    def save_config(self, job_id: str, url: str, events: list[str]) -> None:
        key = log_key(job_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"config": json.dumps({"url": url, "events": events}), "n": 0})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def enqueue(self, job_id: str, event: str, data: dict[str, Any]) -> int | None:
        """Schedule ``event`` of a job for delivery now; the delivery index, or None if not subscribed."""
        at = now_ms()
        once = "1" if event in TERMINAL_EVENTS else "0"
        keys = [log_key(job_id), SCHEDULE_KEY, WAKE_KEY]
        args: list[str | int] = [
            event,
            json.dumps(new_entry(event)),
            build_body(event, data, at),
            at,
            self.ttl,
            once,
            job_id,
        ]
        index = int(self._enqueue(keys=keys, args=args))
        return index if index >= 0 else None

    def load(self, job_id: str) -> dict[str, Any] | None:
        return render(_decode(self.redis.hgetall(log_key(job_id))))

    def claim_due(self, lease_ms: int, limit: int) -> list[tuple[str, int]]:
        flat = self._claim_due(keys=[SCHEDULE_KEY, TOKEN_KEY, LEASES_KEY], args=[now_ms(), lease_ms, limit])
        return [(_s(flat[k]), int(_s(flat[k + 1]))) for k in range(0, len(flat), 2)]

    def next_due_ms(self) -> int | None:
        head = self.redis.zrange(SCHEDULE_KEY, 0, 0, withscores=True)
        return int(head[0][1]) if head else None

    def claim_attempt(self, value: str, token: int, lease_ms: int) -> int | None:
        keys = [SCHEDULE_KEY, LEASES_KEY, TOKEN_KEY]
        got = self._claim_attempt(keys=keys, args=[value, token, now_ms() + lease_ms])
        return int(_s(got)) if got else None

    def read(self, job_id: str, index: int) -> Delivery | None:
        raw = self.redis.hmget(log_key(job_id), ["config", f"d:{index}", f"body:{index}"])
        config, entry, body = (_s(v) if v is not None else None for v in raw)
        if config is None or entry is None or body is None:
            return None
        return Delivery(job_id, index, json.loads(config)["url"], json.loads(entry), body)

    def finish(self, value: str, token: int, entry: dict[str, Any], next_due_ms: int | None) -> int:
        """Write ``entry`` and reschedule/remove it if ``token`` still holds the lease (1), else 0."""
        job_id, index = split_member(value)
        due: str | int = "" if next_due_ms is None else next_due_ms
        args: list[str | int] = [value, token, f"d:{index}", json.dumps(entry), due, self.ttl]
        return int(self._finish(keys=[SCHEDULE_KEY, log_key(job_id), LEASES_KEY], args=args))

    def drop(self, value: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(SCHEDULE_KEY, value)
        pipe.hdel(LEASES_KEY, value)
        pipe.execute()


class AsyncWebhookStore:
    """The API's side: save a job's webhook, enqueue (a queued job cancelled), redeliver, read."""

    def __init__(self, redis: AsyncRedis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._enqueue = redis.register_script(_ENQUEUE)
        self._redeliver = redis.register_script(_REDELIVER)

    async def save_config(self, job_id: str, url: str, events: list[str]) -> None:
        key = log_key(job_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"config": json.dumps({"url": url, "events": events}), "n": 0})
        pipe.expire(key, self.ttl)
        await pipe.execute()

    async def enqueue(self, job_id: str, event: str, data: dict[str, Any]) -> int | None:
        at = now_ms()
        once = "1" if event in TERMINAL_EVENTS else "0"
        keys = [log_key(job_id), SCHEDULE_KEY, WAKE_KEY]
        args: list[str | int] = [
            event,
            json.dumps(new_entry(event)),
            build_body(event, data, at),
            at,
            self.ttl,
            once,
            job_id,
        ]
        index = int(await self._enqueue(keys=keys, args=args))
        return index if index >= 0 else None

    async def redeliver(self, job_id: str) -> int:
        """Send the job's last event again (same webhook-id and body): the new delivery's index.

        Raises ``LookupError`` when the job has no webhook or no event happened yet.
        """
        keys = [log_key(job_id), SCHEDULE_KEY, WAKE_KEY]
        index = int(await self._redeliver(keys=keys, args=[now_ms(), self.ttl, job_id]))
        if index == -1:
            raise LookupError("this job has no webhook")
        if index == -2:
            raise LookupError("this job has no webhook event to redeliver yet")
        return index

    async def load(self, job_id: str) -> dict[str, Any] | None:
        return render(_decode(await self.redis.hgetall(log_key(job_id))))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
