"""The API's side of webhooks (async, torch-free): submit-time checks, transitions the API makes
(cancelling a queued job) and redelivery."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from redis.asyncio import Redis as AsyncRedis

from tnllm.api.schemas import WebhookSpec
from tnllm.config import Settings
from tnllm.errors import WebhookRefused, WebhookSecretError, WebhookURLError
from tnllm.protocol.jobs import JobRecord
from tnllm.store.webhooks import AsyncWebhookStore
from tnllm.webhooks.signing import Signer
from tnllm.webhooks.ssrf import AddressPolicy, AsyncResolver, acheck_url, async_system_resolve

#: longest a submit waits for DNS before refusing the URL
RESOLVE_TIMEOUT_S = 5.0


async def validate_webhook(
    spec: WebhookSpec | None, settings: Settings, resolve: AsyncResolver = async_system_resolve
) -> dict[str, Any] | None:
    """The ``{"url", "events"}`` to store with the job, or None; raises ``WebhookRefused`` (-> 422)."""
    if spec is None:
        return None
    try:
        Signer(settings.webhook_secret)
    except WebhookSecretError as exc:
        raise WebhookRefused(f"webhooks are disabled on this server: {exc}", field="webhook") from exc
    policy = AddressPolicy.from_allowlist(settings.webhook_allowlist)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await acheck_url(spec.url, policy, resolve)
    except TimeoutError as exc:
        raise WebhookRefused(
            f"webhook URL refused: its host did not resolve within {RESOLVE_TIMEOUT_S:g} s"
        ) from exc
    except WebhookURLError as exc:
        raise WebhookRefused(str(exc)) from exc
    return {"url": spec.url, "events": list(spec.events)}


class _Store(Protocol):
    """What these helpers need of ``tnllm.store.AsyncJobStore``."""

    client: AsyncRedis
    ttl: int


async def notify_transition_async(store: _Store, job: JobRecord | None, event: str) -> None:
    """Enqueue ``event`` for a transition the API made (``job`` = the record after it), as the
    workers' ``notify_transition`` does: the same flow (``tnllm.store.webhooks.notify``), the same
    retry through a Redis outage. Never raises: the transition stands whatever happens to its webhook.
    """
    await AsyncWebhookStore(store.client, store.ttl).notify(job, event)


async def redeliver(store: _Store, job_id: str) -> int:
    """Re-send the job's last event; ``LookupError`` (-> 409) when there is none."""
    return await AsyncWebhookStore(store.client, store.ttl).redeliver(job_id)
