"""Webhook event names and the ``"webhook"`` object a job is created with (torch-free, pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tnllm.errors import WebhookURLError
from tnllm.webhooks.ssrf import AddressPolicy, parse_url

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
MAX_URL_LENGTH = 2048


def _default_events() -> list[Event]:
    return ["job.succeeded", "job.failed", "job.cancelled"]


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

    # Syntax only here; the address check needs DNS and runs in the route (ssrf.acheck_url).
    @field_validator("url")
    @classmethod
    def _url_syntax(cls, value: str) -> str:
        try:
            parse_url(value, AddressPolicy())  # allow-list-free: names it admits pass the DNS check later
        except WebhookURLError as exc:
            if "refused" in str(exc):
                return value  # name rules depend on the allow-list: decided by the address check
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("events")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
