"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

Every active secret in ``Settings.webhook_secret`` signs, so secrets rotate without downtime: add the
new one, let receivers switch, drop the old one. The crypto is the ``standardwebhooks`` package's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from standardwebhooks import Webhook

from tnllm.errors import WebhookSecretError


class Signer:
    """Signs webhook bodies with one or more secrets (``whsec_<base64>``)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._hooks: list[Webhook] = []
        for i, secret in enumerate(secrets):
            try:
                self._hooks.append(Webhook(secret))
            except Exception as exc:  # standardwebhooks raises binascii/empty-secret errors
                raise WebhookSecretError(
                    f"TNLLM_WEBHOOK_SECRET entry {i + 1} is not a valid whsec_<base64> secret: {exc}"
                ) from exc
        if not self._hooks:
            raise WebhookSecretError("no webhook secret configured (set TNLLM_WEBHOOK_SECRET)")

    def headers(self, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body`` sent now (space-separated signatures)."""
        when = now or datetime.now(UTC)
        signatures = " ".join(hook.sign(webhook_id, when, body) for hook in self._hooks)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signatures,
        }
