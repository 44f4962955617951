"""Submit-time webhook checks for the API (async, torch-free): what a job may store as its webhook."""

from __future__ import annotations

import asyncio
from typing import Any

from infra.settings import Settings
from worker.webhooks.events import WebhookSpec
from worker.webhooks.signing import Signer, WebhookSecretError
from worker.webhooks.ssrf import (
    AddressPolicy,
    AsyncResolver,
    WebhookURLError,
    acheck_url,
    async_system_resolve,
)

#: longest a submit waits for DNS before refusing the URL
RESOLVE_TIMEOUT_S = 5.0


class WebhookRefused(ValueError):
    """The job's webhook cannot be accepted; ``field`` names the culprit, ``str(err)`` the reason."""

    def __init__(self, message: str, field: str = "webhook.url") -> None:
        super().__init__(message)
        self.field = field


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
