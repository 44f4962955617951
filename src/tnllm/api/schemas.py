"""HTTP models of the API: the compat and health answers. The job API's bodies (``JobCreate`` and
its ``WebhookSpec``, ``JobList``, ``ErrorResponse``) are protocol contracts shared with the Python
client (``tnllm.protocol.http``), and the job object is ``JobPublic`` (shared with webhook payloads);
all are re-exported here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
from tnllm.protocol.webhooks import MAX_URL_LENGTH, WebhookSpec
from tnllm.store import JobPublic

__all__ = [
    "MAX_URL_LENGTH",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_KEYS",
    "CompatRequest",
    "CompatResponse",
    "ErrorDetail",
    "ErrorResponse",
    "HealthStatus",
    "JobCreate",
    "JobList",
    "JobPublic",
    "StrictBody",
    "WebhookSpec",
    "check_unicode",
]


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
