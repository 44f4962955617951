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

Every step that touches the schedule is one atomic script (``lua/webhook_*.lua``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis import exceptions as redis_errors
from redis.asyncio import Redis as AsyncRedis

from tnllm.protocol.jobs import JobRecord
from tnllm.protocol.webhooks import (
    DELIVERY_PREFIX,
    TERMINAL_EVENTS,
    build_body,
    iso,
    new_entry,
    render_webhook,
)
from tnllm.store import flow
from tnllm.store.keys import PREFIX
from tnllm.store.keys import job as job_key
from tnllm.store.ops import ScriptCall
from tnllm.store.scripts import WEBHOOK as SCRIPTS

__all__ = ["AsyncWebhookStore", "Delivery", "WebhookStore", "iso", "notify", "now_ms", "split_member"]

log = logging.getLogger(__name__)

SCHEDULE_KEY = PREFIX + "webhooks:schedule"
LEASES_KEY = PREFIX + "webhooks:leases"
TOKEN_KEY = PREFIX + "webhooks:token"
WAKE_KEY = PREFIX + "webhooks:wake"


def body_key(job_id: str) -> str:
    return f"{PREFIX}webhook:body:{job_id}"


def member(job_id: str, index: int) -> str:
    return f"{job_id}|{index}"


def split_member(value: str) -> tuple[str, int]:
    job_id, _, index = value.rpartition("|")
    return job_id, int(index)


def now_ms() -> int:
    return int(time.time() * 1000)


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _enqueue_call(job_id: str, event: str, data: Mapping[str, Any], ttl: int) -> ScriptCall:
    at = now_ms()
    once = "1" if event in TERMINAL_EVENTS else "0"
    keys = [job_key(job_id), body_key(job_id), SCHEDULE_KEY, WAKE_KEY]
    body = build_body(event, data, at)
    args: list[str | int | float] = [event, json.dumps(new_entry(event)), body, at, ttl, once, job_id]
    return ScriptCall("webhook_enqueue", keys, args)


#: How long a transition keeps trying to enqueue its webhook through a Redis outage (seconds).
ENQUEUE_RETRY_S = 5.0
#: The Redis errors it waits out (anything else is a bug: logged, and the transition stands).
TRANSIENT_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError)


def notify(job: JobRecord | None, event: str, ttl: int) -> flow.Flow:
    """Report that ``job`` (its record after the transition) just entered ``event``'s state: for a
    job with a webhook, enqueue the delivery (the job object as the body), waiting out a Redis
    outage for up to ``ENQUEUE_RETRY_S``. Never raises: the transition stands whatever happens to
    its webhook. One flow for the workers (``WebhookStore.notify``) and the API (the async twin).
    """
    if job is None:
        return
    log.debug("job %s: %s", job.id, event)
    if not job.webhook:
        return
    call = _enqueue_call(job.id, event, job.to_public().model_dump(mode="json"), ttl)
    end = time.monotonic() + ENQUEUE_RETRY_S
    delay = 0.1
    while True:
        try:
            yield call
            return
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() >= end:
                log.error("job %s: webhook %s not enqueued, Redis unavailable: %s", job.id, event, exc)
                return
            yield flow.Sleep(delay)
            delay = min(delay * 2, 1.0)
        except Exception:  # a webhook bug must not fail the transition
            log.exception("job %s: webhook %s not enqueued", job.id, event)
            return


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
        self._scripts = {name: redis.register_script(SCRIPTS[name]) for name in ("webhook_enqueue",)}
        self._enqueue = self._scripts["webhook_enqueue"]
        self._claim_due = redis.register_script(SCRIPTS["webhook_claim_due"])
        self._claim_attempt = redis.register_script(SCRIPTS["webhook_claim_attempt"])
        self._finish = redis.register_script(SCRIPTS["webhook_finish"])

    def enqueue(self, job_id: str, event: str, data: Mapping[str, Any]) -> int | None:
        """Schedule ``event`` for delivery now; the delivery index, or None when the job has no
        webhook, is not subscribed to ``event``, or already enqueued this terminal event.

        ``data`` is the job object (``JobPublic`` as JSON) after the transition.
        """
        call = _enqueue_call(job_id, event, data, self.ttl)
        index = int(self._enqueue(keys=call.keys, args=call.args))
        return index if index >= 0 else None

    def notify(self, job: JobRecord | None, event: str) -> None:
        """The ``notify`` flow: enqueue ``event`` for a transition just made (never raises)."""
        flow.run_sync(notify(job, event, self.ttl), self.redis, self._scripts)

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
        self._scripts = {name: redis.register_script(SCRIPTS[name]) for name in ("webhook_enqueue",)}
        self._enqueue = self._scripts["webhook_enqueue"]
        self._redeliver = redis.register_script(SCRIPTS["webhook_redeliver"])

    async def enqueue(self, job_id: str, event: str, data: Mapping[str, Any]) -> int | None:
        """``WebhookStore.enqueue`` for async callers."""
        call = _enqueue_call(job_id, event, data, self.ttl)
        index = int(await self._enqueue(keys=call.keys, args=call.args))
        return index if index >= 0 else None

    async def notify(self, job: JobRecord | None, event: str) -> None:
        """``WebhookStore.notify`` for async callers (the same flow, the same retry)."""
        await flow.run_async(notify(job, event, self.ttl), self.redis, self._scripts)

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
