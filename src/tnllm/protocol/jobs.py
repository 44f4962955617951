"""Typed job records: what a job hash in Redis holds, and the public job object clients see.

Pure pydantic (no Redis, no torch): the API, the workers and the webhook sender all build and read
jobs through these models, so the JSON a client sees is the same everywhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from tnllm.protocol.outputs import Choice, FinishReason
from tnllm.protocol.sampling import SamplingParams, resolved_schema
from tnllm.protocol.webhooks import WebhookPublic


class JobStatus(StrEnum):
    """Lifecycle of a job: ``queued → running → succeeded | failed | cancelled``; ``paused`` (out
    of the queue and of any slot) between ``queued``/``running`` and ``queued`` again."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Terminal states are final: no transition leaves them."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A UTC datetime that serializes as RFC 3339 with a ``Z`` suffix.
Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json-unless-none")]


def from_epoch(value: float | None) -> datetime | None:
    """Epoch seconds (as stored in Redis) to an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationParams(SamplingParams):
    """What to generate: exactly one of ``prompt`` / ``messages`` plus the sampling parameters (stored
    flat, as the job body gives them).

    The API validates limits and resolves ``max_new_tokens`` before storing; the worker trusts these
    values but the engine still refuses prompts that do not fit its context.
    """

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    #: continue this earlier succeeded job's conversation (``prompt``/``messages``: the new part only)
    continue_from: str | None = None
    #: False: the engine neither resumes from nor saves states for this job (full recompute)
    state_cache: bool = True
    raw_prompt: bool = False


class Usage(BaseModel):
    """Token counts of one job."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: prompt tokens resumed from a saved state instead of prefilled (docs/STATE.md)
    cached_tokens: int = 0


class Conversation(BaseModel):
    """What a later job needs to continue a succeeded one (``continue_from``); stored per job."""

    #: the job's prompt ids then its reply's ids, as the engine ran and generated them
    ids: list[int]
    #: the templated conversation of its prompt (None: it continued raw text, see text/prompt.py)
    turns: list[ChatMessage] | None
    #: the reply's text (the next turn's assistant message)
    reply: str
    #: the worker that ran it, whose engine holds its final state (``worker_queue(worker)``)
    worker: str


class JobResult(BaseModel):
    """What a finished job produced (also the partial text of a cancelled running job).

    ``text`` and ``finish_reason`` are choice 0's; ``usage.completion_tokens`` counts the tokens
    of every choice (the prompt once); ``choices`` has ``n`` entries (empty in records written
    before choices existed)."""

    text: str
    finish_reason: FinishReason
    usage: Usage = Field(default_factory=Usage)
    choices: list[Choice] = Field(default_factory=list)


class JobErrorType(StrEnum):
    """The machine-readable reasons a job fails (``JobError.type``; also the failure-counter label)."""

    #: Its worker stopped ``max_attempts`` times while running it (the reaper gave up).
    WORKER_LOST = "worker_lost"
    #: It ran longer than ``job_time_limit``.
    TIMEOUT = "timeout"
    #: The engine refused it (prompt too long for the context, malformed conversation, ...).
    INVALID_REQUEST = "invalid_request"
    #: The engine failed while generating it.
    ENGINE_ERROR = "engine_error"


class JobError(BaseModel):
    """Why a job failed; ``type`` is machine-readable (``worker_lost``, ``timeout``, ``invalid_request``)."""

    #: A ``JobErrorType`` value when written; typed ``str`` so that a record written by another
    #: version still reads (and the OpenAPI document stays as it is).
    type: str
    message: str


# The sampling fields are the stored (resolved) ``SamplingParams``, inherited: declared once.
class JobPublic(SamplingParams):
    """The job object of the HTTP API (and of webhook payloads)."""

    model_config = ConfigDict(extra="ignore", frozen=False, json_schema_extra=resolved_schema)

    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    queue_position: int | None = Field(
        default=None, description="Queued jobs that run before this one (0 = next); only while queued."
    )
    estimated_start_at: Timestamp | None = Field(
        default=None,
        description="While queued: when it should start, from the workers' measured step times and "
        "the tokens of the jobs ahead and running (docs/STATE.md). Null when no worker is live.",
    )
    estimated_finish_at: Timestamp | None = Field(
        default=None,
        description="While queued or running: when it should finish (its `max_new_tokens` bound: "
        "an early stop only makes it sooner).",
    )
    priority: int
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    continue_from: str | None = Field(
        default=None, description="The earlier job whose conversation this one continues."
    )
    state_cache: bool = Field(default=True, description="False: no saved state was used (full recompute).")
    raw_prompt: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    cancel_requested: bool = False
    result: JobResult | None = None
    error: JobError | None = None
    webhook: WebhookPublic | None = Field(
        default=None, description="The callback (`url`, `events`) and its delivery log (`deliveries`)."
    )


class JobRecord(BaseModel):
    """Everything stored about one job (the ``job:{id}`` hash, decoded)."""

    id: str
    owner: str
    status: JobStatus
    priority: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: GenerationParams
    metadata: dict[str, Any] = Field(default_factory=dict)
    attempt: int = 0
    lease_owner: str | None = None
    cancel_requested: bool = False
    result: JobResult | None = None
    error: JobError | None = None
    #: The webhook subscription ``{"url", "events"}`` plus its delivery log ``"deliveries"``
    #: (``tnllm/protocol/webhooks.py``); None when the job has no webhook.
    webhook: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """True once the job reached succeeded, failed or cancelled."""
        return self.status.terminal

    def to_public(self, queue_position: int | None = None) -> JobPublic:
        """The client-facing object; ``queue_position`` is only shown while queued."""
        return JobPublic(
            id=self.id,
            status=self.status,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            queue_position=queue_position if self.status is JobStatus.QUEUED else None,
            priority=self.priority,
            **self.params.model_dump(exclude={"messages"}),
            messages=self.params.messages,
            metadata=self.metadata,
            attempts=self.attempt,
            cancel_requested=self.cancel_requested,
            result=self.result,
            error=self.error,
            webhook=WebhookPublic.model_validate(self.webhook) if self.webhook else None,
        )


def dumps(value: Any) -> str:
    """Compact JSON used for every JSON field stored in Redis."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
