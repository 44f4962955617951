"""Request and response bodies of ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``,
shaped as OpenAI's API reference gives them.

The request models are strict bodies (``StrictBody``: the API's one set of input rules) with
OpenAI's names and types; ranges and meanings are checked once, by
the job contract (``SamplingParams`` through ``JobCreate``) that ``tnllm.api.openai.adapt`` maps
them onto. Fields OpenAI has and this server does not are caught there too (``extra="allow"``, then
refused by name), so nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tnllm.api.schemas import StrictBody


class StreamOptions(StrictBody):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage (and empty choices)."""

    include_usage: bool | None = None


class ChatMessageIn(StrictBody):
    """One message of ``messages``: ``content`` a string or a list of ``{"type": "text", "text"}``."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _Common(StrictBody):
    """Parameters both generation routes share (OpenAI's names)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A served model id (`GET /v1/models`).")
    max_tokens: int | None = Field(default=None, description="Tokens to generate at most.")
    temperature: float | None = Field(default=None, description="Default 1 (OpenAI's); 0 = greedy.")
    top_p: float | None = None
    n: int | None = Field(default=None, description="Choices per prompt.")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, description="Stored in the job's metadata as `user`.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Common):
    """Body of ``POST /v1/chat/completions``. tnllm's own knobs (`top_k`, `repetition_penalty`,
    `priority`, `ignore_eos`, `webhook`, `metadata`) come as extra fields (the client's
    `extra_body`)."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, description="Same as `max_tokens`.")
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = Field(
        default=None, description="`{type: text | json_object | json_schema}`."
    )


class CompletionRequest(_Common):
    """Body of ``POST /v1/completions``: ``prompt`` is continued as it is (no chat template). A
    list of prompts gives one job and one choice (``index``) per prompt; token-id prompts are
    decoded to text with the model's tokenizer first. Extra fields as for chat."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(
        default=16, description="Tokens to generate at most (OpenAI's default 16)."
    )
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class Usage(BaseModel):
    """Token counts: prompt tokens are those of the rendered prompt (chat template included)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    """The assistant's answer."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    """Answer of ``POST /v1/chat/completions`` (``id`` is ``chatcmpl-<job id>``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    """One choice of a completion."""

    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str


class Completion(BaseModel):
    """Answer of ``POST /v1/completions`` (``id`` is ``cmpl-<first job id>``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Model(BaseModel):
    """A served model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When its oldest ready worker started (epoch seconds).")
    owned_by: str = "tnllm"


class ModelList(BaseModel):
    """Answer of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes."""

    error: OpenAIErrorDetail


# --- the Batch API ---------------------------------------------------------------------------


class FileObject(BaseModel):
    """A stored file (`purpose`: `batch` for inputs, `batch_output` for results)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileList(BaseModel):
    """A page of the caller's files, newest first (`after` = the last id of the previous page)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    """Answer of `DELETE /v1/files/{id}`."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


BatchEvent = Literal["batch.completed", "batch.failed", "batch.cancelled"]


def _batch_events() -> list[BatchEvent]:
    return ["batch.completed", "batch.failed", "batch.cancelled"]


class BatchWebhook(StrictBody):
    """tnllm's extra: a signed callback for the batch's final status (docs/WEBHOOKS.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s) callback URL (the SSRF rules of job webhooks).")
    events: list[BatchEvent] = Field(default_factory=_batch_events, min_length=1)


class BatchCreate(StrictBody):
    """Body of `POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(
        description="A `batch` file of JSONL request lines `{custom_id, method, url, body}`."
    )
    endpoint: str = Field(description="`/v1/chat/completions` or `/v1/completions` (every line's `url`).")
    completion_window: str = Field(description="`24h`.")
    metadata: dict[str, str] | None = None
    webhook: BatchWebhook | None = Field(default=None, description="Extra body: `{url, events}`.")


class RequestCounts(BaseModel):
    """How many requests the batch holds, completed and failed (so far)."""

    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    """A batch (OpenAI's object): `status` validating → in_progress → finalizing → completed, or
    failed (malformed input file) or cancelling → cancelled."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    request_counts: RequestCounts
    errors: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    """A page of the caller's batches, newest first."""

    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
