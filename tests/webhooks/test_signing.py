"""Standard Webhooks signatures: verification, tampering, old timestamps and secret rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.webhooks.conftest import SECRET, SECRET_NEXT
from tnllm.errors import WebhookSecretError
from tnllm.webhooks.signing import Signer

BODY = '{"type":"job.succeeded","timestamp":"2026-01-01T00:00:00.000Z","data":{"id":"j1"}}'


def test_signature_verifies_with_standardwebhooks() -> None:
    headers = Signer([SECRET]).headers("msg_1", BODY)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "job.succeeded",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "data": {"id": "j1"},
    }


def test_tampered_body_or_id_fails() -> None:
    headers = Signer([SECRET]).headers("msg_1", BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(BODY.replace("j1", "j2"), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(BODY, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET_NEXT).verify(BODY, headers)


def test_old_timestamp_fails() -> None:
    old = datetime.now(UTC) - timedelta(minutes=10)
    headers = Signer([SECRET]).headers("msg_1", BODY, now=old)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, headers)


def test_rotation_signs_with_every_secret() -> None:
    headers = Signer([SECRET, SECRET_NEXT]).headers("msg_1", BODY)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    Webhook(SECRET).verify(BODY, headers)
    Webhook(SECRET_NEXT).verify(BODY, headers)


@pytest.mark.parametrize("secrets", [[], ["whsec_!!notbase64!!"], ["whsec_"]])
def test_bad_or_missing_secret_is_refused(secrets: list[str]) -> None:
    with pytest.raises(WebhookSecretError):
        Signer(secrets)
