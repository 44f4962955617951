"""The job API's HTTP bodies, shared by the API and the Python client (``tnllm.client``) so that
neither declares a field of its own: ``JobCreate`` (``POST /v1/jobs``), ``JobList`` (a page of
``GET /v1/jobs``) and ``ErrorResponse`` (every error answer).

Pure pydantic: the sampling fields are the one ``SamplingParams`` (inherited, so the body stays flat),
the callback is ``WebhookSpec`` (``tnllm.protocol.webhooks``). Limits that depend on a deployment are
the API's checks, made after parsing.
"""

from __future__ import annotations

import json
from typing import Any, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tnllm.protocol.jobs import ChatMessage, JobPublic
from tnllm.protocol.sampling import SamplingParams
from tnllm.protocol.tasks import MAX_PRIORITY, MIN_PRIORITY
from tnllm.protocol.webhooks import WebhookSpec


def check_unicode(value: Any, where: str = "") -> Any:
    """Refuse lone UTF-16 surrogates (``"\\ud800"`` is valid JSON but not encodable text), anywhere
    in ``value``; the error names the path inside the field."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"invalid text{' at ' + where if where else ''}: lone surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key, where)
            check_unicode(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_unicode(item, f"{where}[{i}]")
    return value


class StrictBody(BaseModel):
    """Base of every request body: strict types (``true``, ``"4"`` or ``4.0`` is no integer), no
    unknown fields, no lone surrogates. Routes added later subclass it to get the same rules."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _json_values(cls, value: Any, info: ValidationInfo) -> Any:
        value = check_unicode(value)
        # strict mode takes only a tuple for a tuple field; a JSON array arrives as a list
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, list) and field is not None and get_origin(field.annotation) is tuple:
            return tuple(value)
        return value


#: Bounds of the ``metadata`` object (echoed back, so kept small).
METADATA_MAX_BYTES = 4096
METADATA_MAX_KEYS = 32


# The sampling options are the one contract's (``SamplingParams``), inherited so the body stays flat.
class JobCreate(SamplingParams, StrictBody):
    """Body of ``POST /v1/jobs``: exactly one of ``prompt`` / ``messages``, plus sampling options.

    Limits that depend on the deployment (``max_new_tokens`` ≤ TNLLM_MAX_NEW_TOKENS_LIMIT, prompt
    tokens ≤ TNLLM_MAX_PROMPT_TOKENS, at most TNLLM_MAX_STOP_STRINGS stop strings) are checked after
    parsing and answered with 422 / 413 naming the field.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prompt": "What is linear attention?", "max_new_tokens": 128}],
            # exactly one of the two (the other absent or null)
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ],
        },
    )

    prompt: str | None = Field(
        default=None,
        min_length=1,
        description="User text, wrapped in the chat template after the default system message.",
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description="A conversation instead of `prompt`: [{role: system|user|assistant, content}].",
    )
    continue_from: str | None = Field(
        default=None,
        max_length=128,
        description="Continue this earlier succeeded job of yours: the conversation is its conversation, "
        "its reply, then `messages` (the new turns only) or `prompt` (raw text appended as it is). "
        "Only the new tokens are prefilled where its state is kept (docs/STATE.md).",
    )
    state_cache: bool = Field(
        default=True,
        description="False: neither resume from nor save any recurrent state (a full recompute).",
    )
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0-9; higher runs first.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description=f"Small object echoed back (≤ {METADATA_MAX_BYTES} bytes of JSON)."
    )
    webhook: WebhookSpec | None = Field(
        default=None,
        description="Callback `{url, events}` for this job's events, signed (docs/WEBHOOKS.md).",
    )

    @field_validator("messages")
    @classmethod
    def _prompt_xor_messages(cls, value: list[ChatMessage] | None, info: ValidationInfo) -> Any:
        if "prompt" not in info.data:  # prompt itself was invalid: that error is enough
            return value
        has_prompt = info.data["prompt"] is not None
        if value is not None and has_prompt:
            raise ValueError("give either 'prompt' or 'messages', not both")
        if value is None and not has_prompt:
            raise ValueError("one of 'prompt' or 'messages' is required")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > METADATA_MAX_KEYS:
            raise ValueError(f"at most {METADATA_MAX_KEYS} keys")
        if len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
            raise ValueError(f"at most {METADATA_MAX_BYTES} bytes of JSON")
        return value


class JobList(BaseModel):
    """A page of the caller's jobs, newest first."""

    object: str = "list"
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class ErrorDetail(BaseModel):
    """The ``error`` object of every error answer."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"type", "message", ...}}``."""

    error: ErrorDetail
