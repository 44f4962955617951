"""Webhook event names, a job's callback (``WebhookSpec``, part of the job body) and the delivery
log's shape, as stored in the job hash and shown in the job object (pure, no I/O).

The job object's ``"webhook"`` is ``{"url", "events", "deliveries": [{"event", "webhook_id",
"state": "pending"|"delivered"|"failed", "attempts": [{"at", "status_code", "error", "duration_ms"}],
"next_attempt_at"}]}``; ``tnllm.store.codec`` builds it with ``render_webhook``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tnllm.errors import WebhookURLError

Event = Literal["job.running", "job.succeeded", "job.failed", "job.cancelled"]
ALL_EVENTS: tuple[str, ...] = ("job.running", "job.succeeded", "job.failed", "job.cancelled")
TERMINAL_EVENTS: tuple[str, ...] = ("job.succeeded", "job.failed", "job.cancelled")
#: job status -> the event its transition emits
EVENT_FOR_STATUS: dict[str, str] = {
    "running": "job.running",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


#: Longest callback URL a job may give.
MAX_URL_LENGTH = 2048


def _default_events() -> list[Event]:
    return ["job.succeeded", "job.failed", "job.cancelled"]


def parse_webhook_url(url: str) -> httpx.URL:
    """A callback URL's syntax (no DNS, no address rules): http(s) with a host, else
    ``WebhookURLError`` naming the fault. The SSRF guard (``tnllm.webhooks.ssrf``) builds on it."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise WebhookURLError(f"webhook URL is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise WebhookURLError(f"webhook URL must use http or https, not {parsed.scheme or 'no scheme'!r}")
    if not parsed.host.strip().strip("[]").rstrip("."):
        raise WebhookURLError("webhook URL has no host")
    return parsed


class WebhookSpec(BaseModel):
    """A job's callback: events are POSTed to `url`, signed per Standard Webhooks (docs/WEBHOOKS.md).

    `url` must be http(s) with a host whose addresses are public (internal, loopback and metadata
    addresses are refused with 422 unless the server's allow-list admits them).
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) callback URL.")
    events: list[Event] = Field(
        default_factory=_default_events,
        min_length=1,
        description="Events to send: job.running, job.succeeded, job.failed, job.cancelled "
        "(default: the three terminal ones).",
    )

    # Syntax only here; the address rules depend on the server's allow-list and need DNS: the API
    # checks them on submit (tnllm.webhooks.ssrf.acheck_url).
    @field_validator("url")
    @classmethod
    def _url_syntax(cls, value: str) -> str:
        try:
            parse_webhook_url(value)
        except WebhookURLError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("events")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookAttempt(BaseModel):
    """One attempt of a delivery (POST to the callback URL)."""

    at: str = Field(description="When it started (RFC 3339, UTC).")
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    error: str | None = Field(description="Why it failed (`HTTP 500`, `timed out after 10 s`, ...).")
    duration_ms: int


class WebhookDelivery(BaseModel):
    """One event's delivery: the same `webhook_id` (header `webhook-id`) on every attempt."""

    event: str
    webhook_id: str
    state: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt]
    next_attempt_at: str | None = Field(default=None, description="When the next retry is due (pending).")


class WebhookPublic(BaseModel):
    """The job's callback and its delivery log."""

    url: str
    events: list[str]
    deliveries: list[WebhookDelivery] = Field(default_factory=list)


#: job-hash field prefixes owned by the webhooks work
COUNT_FIELD = "wh:n"
DELIVERY_PREFIX = "wh:d:"
ONCE_PREFIX = "wh:once:"


def iso(ms: int | float) -> str:
    """Epoch milliseconds as RFC 3339 UTC with a ``Z`` (the job object's timestamp format)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_entry(event: str) -> dict[str, Any]:
    """A fresh pending delivery with its own ``webhook_id`` (kept by every retry and redelivery)."""
    return {
        "event": event,
        "webhook_id": f"msg_{uuid.uuid4().hex}",
        "state": "pending",
        "attempts": [],
        "next_attempt_at": None,
    }


def build_body(event: str, data: Mapping[str, Any], at_ms: int) -> str:
    """The signed JSON body: ``{"type", "timestamp", "data"}``.

    ``data`` is the job object; its own ``webhook.deliveries`` is left out, since it changes with
    every attempt and would make the event describe its own delivery.
    """
    job = dict(data)
    if isinstance(job.get("webhook"), dict):
        job["webhook"] = {k: v for k, v in job["webhook"].items() if k != "deliveries"}
    return json.dumps(
        {"type": event, "timestamp": iso(at_ms), "data": job}, separators=(",", ":"), ensure_ascii=False
    )


def render_webhook(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """A job's ``"webhook"`` object from its hash fields (``webhook`` config + ``wh:d:{i}``)."""
    raw = fields.get("webhook")
    if not raw:
        return None
    out: dict[str, Any] = {**json.loads(raw), "deliveries": []}
    count = int(fields.get(COUNT_FIELD) or 0)
    for i in range(count):
        entry = fields.get(f"{DELIVERY_PREFIX}{i}")
        if entry:
            out["deliveries"].append(json.loads(entry))
    return out
