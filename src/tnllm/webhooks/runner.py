"""The body of the WEBHOOK_TASK: claim the lease, make one attempt, log it, reschedule or finish."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import Redis

from tnllm.config import Settings
from tnllm.errors import WebhookSecretError
from tnllm.store import stats as jobstats
from tnllm.store.webhooks import WebhookStore, iso, now_ms, split_member
from tnllm.webhooks.delivery import AttemptResult, attempt, next_delay
from tnllm.webhooks.signing import Signer
from tnllm.webhooks.ssrf import AddressPolicy, AsyncResolver, async_system_resolve
from tnllm.webhooks.transport import PinnedTransport

log = logging.getLogger(__name__)

#: an attempt's lease outlives its timeout by this much (resolution, signing, the log write)
LEASE_MARGIN_MS = 5000


@dataclass
class WebhookContext:
    """Everything a webhook worker process builds once: settings, Redis, store, signer, policy."""

    settings: Settings
    redis: Redis
    store: WebhookStore
    signer: Signer | None
    signer_error: str | None
    policy: AddressPolicy
    resolve: AsyncResolver = async_system_resolve
    rng: random.Random = field(default_factory=random.Random)
    #: one TLS context for every attempt: building one (loading the CA bundle) costs more than a
    #: whole plain-HTTP delivery
    tls: ssl.SSLContext = field(default_factory=httpx.create_ssl_context)

    @classmethod
    def build(
        cls, settings: Settings, redis: Redis, resolve: AsyncResolver = async_system_resolve
    ) -> WebhookContext:
        signer, error = None, None
        try:
            signer = Signer(settings.webhook_secret)
        except WebhookSecretError as exc:
            error = str(exc)  # deliveries fail with this reason rather than going out unsigned
        store = WebhookStore(redis, settings.result_ttl)
        policy = AddressPolicy.from_allowlist(settings.webhook_allowlist)
        return cls(settings, redis, store, signer, error, policy, resolve)

    @property
    def attempt_lease_ms(self) -> int:
        return int(self.settings.webhook_timeout * 1000) + LEASE_MARGIN_MS


def run_delivery(ctx: WebhookContext, value: str, token: int) -> str:
    """Run one attempt of the delivery ``value`` (``job_id|index``) dispatched with lease ``token``.

    Returns what happened (for the Celery result and logs): ``superseded`` (a stale or duplicate
    message), ``expired`` (the job is gone), or the delivery's new state.
    """
    held = ctx.store.claim_attempt(value, token, ctx.attempt_lease_ms)
    if held is None:
        return "superseded"
    job_id, index = split_member(value)
    delivery = ctx.store.read(job_id, index)
    if delivery is None:
        ctx.store.drop(value)
        return "expired"
    entry = delivery.entry
    if entry["state"] != "pending":
        ctx.store.finish(value, held, entry, None)
        return str(entry["state"])
    result = _attempt(ctx, delivery.url, delivery.body, entry["webhook_id"])
    entry["attempts"].append(result.log_row())
    next_due = _apply(ctx, entry, result)
    written = ctx.store.finish(value, held, entry, next_due)
    if written == 0:
        log.warning("webhook %s of job %s: lease lost before the log write", entry["webhook_id"], job_id)
        return "superseded"
    _count(ctx, entry["state"])
    log.info(
        "webhook %s (%s) of job %s attempt %d: %s",
        entry["webhook_id"],
        entry["event"],
        job_id,
        len(entry["attempts"]),
        result.error or result.status_code,
    )
    return str(entry["state"])


def _attempt(ctx: WebhookContext, url: str, body: str, webhook_id: str) -> AttemptResult:
    if ctx.signer is None:
        return AttemptResult(now_ms(), None, ctx.signer_error, 0, "stop")
    headers = ctx.signer.headers(webhook_id, body)
    transport = PinnedTransport(ctx.policy, ctx.resolve, verify=ctx.tls)
    return asyncio.run(attempt(url, body, headers, ctx.settings.webhook_timeout, transport))


def _apply(ctx: WebhookContext, entry: dict[str, Any], result: AttemptResult) -> int | None:
    """Set the entry's state from the attempt; the next due time in ms, or None when final."""
    entry["next_attempt_at"] = None
    if result.outcome == "delivered":
        entry["state"] = "delivered"
        return None
    delay = None
    if result.outcome == "retry":
        delay = next_delay(ctx.settings.webhook_retry_delays, len(entry["attempts"]), ctx.rng)
    if delay is None:
        entry["state"] = "failed"
        return None
    due = now_ms() + int(delay * 1000)
    entry["next_attempt_at"] = iso(due)
    return due


def _count(ctx: WebhookContext, state: str) -> None:
    """Cluster-wide delivery counters for /metrics (never fails the delivery)."""
    try:
        pipe = ctx.redis.pipeline(transaction=False)
        jobstats.add_webhook_delivery(pipe, {"pending": "retrying"}.get(state, state))
        pipe.execute()
    except Exception:
        log.warning("webhook delivery counters not updated", exc_info=True)
