"""HTTP models of the API: the compat and health answers. The job API's bodies (``JobCreate`` and
its ``WebhookSpec``, ``JobList``, ``ErrorResponse``) are protocol contracts shared with the Python
client (``tnllm.protocol.http``), and the job object is ``JobPublic`` (shared with webhook payloads);
all are re-exported here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tnllm.protocol.http import (
    METADATA_MAX_BYTES,
    METADATA_MAX_KEYS,
    ErrorDetail,
    ErrorResponse,
    JobCreate,
    JobList,
    StrictBody,
    check_unicode,
)
from tnllm.protocol.jobs import ChatMessage, Timestamp
from tnllm.protocol.webhooks import MAX_URL_LENGTH, WebhookSpec
from tnllm.store import JobPublic

__all__ = [
    "MAX_URL_LENGTH",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_KEYS",
    "CancelAnswer",
    "CompatRequest",
    "CompatResponse",
    "ErrorDetail",
    "ErrorResponse",
    "HealthStatus",
    "JobCreate",
    "JobList",
    "JobPublic",
    "PrefixCreate",
    "PrefixPublic",
    "StrictBody",
    "WebhookSpec",
    "check_unicode",
]


class CancelAnswer(JobPublic):
    """The job object after a cancel request, with what the request found and did."""

    cancel: Literal["cancelled", "stopping"] = Field(
        description="`cancelled`: the job was queued and never runs (200). `stopping`: it was "
        "running; its worker stops it within one engine step of receiving the request and it ends "
        "`cancelled` with its partial text, unless it finished first (then it ends as it finished: "
        "read the job to know) (202). A finished job answers 409 instead."
    )


class PrefixCreate(StrictBody):
    """Body of ``POST /v1/prefixes``: exactly one of ``prompt`` / ``messages``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "Here is the manual: ..."}]})

    prompt: str | None = Field(
        default=None,
        min_length=1,
        description="The start of later jobs' `prompt`: the rendered conversation up to the end of this "
        "text inside the user turn (the default system message first).",
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        description="Complete first turns of later jobs' `messages` (few-shot examples, a document).",
    )

    @model_validator(mode="after")
    def _prompt_xor_messages(self) -> PrefixCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class PrefixPublic(BaseModel):
    """A pinned prefix."""

    id: str
    object: str = "prefix"
    created_at: Timestamp
    tokens: int | None = Field(description="Its length in tokens (null: this API cannot count them).")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class CompatRequest(StrictBody):
    """Body of the tutorial's ``POST /`` (unknown fields ignored, as the tutorial's server did)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(min_length=1)


class CompatResponse(BaseModel):
    """Answer of the tutorial's ``POST /``."""

    response: str
    status: int = 200
    time: str = Field(description="Local time `YYYY-mm-dd HH:MM:SS`.")


class HealthStatus(BaseModel):
    """Answer of /healthz and /readyz."""

    status: str
    redis: bool | None = None
    workers_ready: int | None = None
    persistence: str | None = Field(default=None, description="`aof` or `none` (Redis persistence).")
    problems: list[str] = Field(default_factory=list, description="Why not ready.")
    warnings: list[str] = Field(default_factory=list, description="Ready, but worth fixing.")
