"""The adapter: OpenAI request bodies → the job contract (``JobCreate``), job records → OpenAI
answers. Nothing here re-declares a sampling field: values are handed to ``JobCreate`` under the
contract's names and it validates them; its errors are reported under OpenAI's names.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tnllm.api.errors import ApiError, field_name
from tnllm.api.openai.errors import invalid
from tnllm.api.openai.schemas import ChatCompletionRequest, ChatMessageIn, CompletionRequest
from tnllm.api.schemas import JobCreate
from tnllm.protocol.jobs import JobErrorType, JobRecord, JobStatus

#: tnllm's own knobs, accepted as extra body fields under the contract's names.
TNLLM_EXTRAS = frozenset({"top_k", "repetition_penalty", "priority", "ignore_eos", "webhook", "metadata"})
#: The contract's names → the OpenAI parameter a client gave (for error messages).
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "body": "body"}
#: Parameters whose neutral values are accepted (they change nothing) and other values refused.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}
#: OpenAI parameters that are the contract's under the same name.
_SAME_NAME = ("top_p", "seed", "n", "presence_penalty", "frequency_penalty", "logit_bias", "response_format")
_ROLES = ("system", "user", "assistant")


def check_parameters(body: ChatCompletionRequest | CompletionRequest) -> None:
    """400 naming the first parameter this server does not support (or not with that value)."""
    for name, value in (body.model_extra or {}).items():
        if name not in TNLLM_EXTRAS and value is not None:
            raise invalid(
                f"{name}: this parameter is not supported by this server", name, "unsupported_parameter"
            )
    for name, neutral in _NEUTRAL.items():
        value = getattr(body, name, None)
        if name in body.model_fields_set and value not in neutral:
            raise invalid(
                f"{name}: only {neutral[1]!r} is supported by this server (got {value!r})",
                name,
                "unsupported_value",
            )
    options = body.stream_options
    if options is not None and not body.stream:
        raise invalid("stream_options: only allowed when stream is true", "stream_options")


def message_text(i: int, message: ChatMessageIn) -> dict[str, str]:
    """``{"role", "content"}`` of one message; 400 naming an unsupported role, part or field."""
    if message.role not in _ROLES:
        raise invalid(
            f"messages[{i}].role: {message.role!r} is not supported (system, user, assistant)",
            f"messages[{i}].role",
        )
    for name, value in {"name": message.name, **(message.model_extra or {})}.items():
        if value is not None:
            raise invalid(f"messages[{i}].{name}: not supported by this server", f"messages[{i}].{name}")
    content = message.content
    if content is None:
        raise invalid(f"messages[{i}].content: required", f"messages[{i}].content")
    if isinstance(content, str):
        return {"role": message.role, "content": content}
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise invalid(
                f"messages[{i}].content[{j}].type: only text parts are supported (got {part.get('type')!r})",
                f"messages[{i}].content[{j}].type",
            )
        texts.append(part["text"])
    return {"role": message.role, "content": "".join(texts)}


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> dict[str, Any]:
    """The contract's fields from OpenAI's (only those given; OpenAI's temperature default is 1)."""
    fields: dict[str, Any] = {"temperature": 1.0 if body.temperature is None else body.temperature}
    if max_tokens is not None:
        fields["max_new_tokens"] = max_tokens
    for name in _SAME_NAME:
        if (value := getattr(body, name, None)) is not None:
            fields[name] = value
    if body.stop is not None:
        fields["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    if isinstance(body, ChatCompletionRequest):
        if body.logprobs is not None:
            fields["logprobs"] = body.logprobs
        if body.top_logprobs is not None:
            fields["top_logprobs"] = body.top_logprobs
    elif body.logprobs is not None:  # completions: the number of top entries (0: the chosen token's only)
        fields.update(logprobs=True, top_logprobs=body.logprobs)
    extras = {k: v for k, v in (body.model_extra or {}).items() if k in TNLLM_EXTRAS and v is not None}
    metadata = dict(extras.pop("metadata", None) or {})
    if body.user is not None:
        metadata["user"] = body.user
    return {**fields, **extras, "metadata": metadata}


def to_job(fields: dict[str, Any], default_priority: int) -> JobCreate:
    """``JobCreate`` from contract-named fields; its validation errors as 400s under OpenAI's names."""
    fields.setdefault("priority", default_priority)
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = field_name(("body", *err.get("loc", ())))
        param = OPENAI_NAMES.get(param, param)
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise invalid(f"{param}: {message}", param) from exc


def chat_job(body: ChatCompletionRequest, default_priority: int) -> JobCreate:
    """The job of a chat completion request."""
    check_parameters(body)
    messages = [message_text(i, m) for i, m in enumerate(body.messages)]
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return to_job({**_sampling(body, max_tokens), "messages": messages}, default_priority)


def completion_prompts(body: CompletionRequest, decode: Any) -> list[str]:
    """The prompt texts of a completion request; token ids are decoded with ``decode`` (None when
    no tokenizer is available here → 400)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid("prompt: must not be empty", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [str(p) for p in prompt]
    lists = [prompt] if all(isinstance(p, int) for p in prompt) else prompt
    if decode is None:
        raise invalid("prompt: token ids need the model's tokenizer on the API host", "prompt")
    return [decode(ids) for ids in lists]


def completion_jobs(body: CompletionRequest, prompts: list[str], default_priority: int) -> list[JobCreate]:
    """One job per prompt of a completion request (the prompt continued as it is)."""
    check_parameters(body)
    fields = _sampling(body, body.max_tokens)
    return [to_job({**fields, "prompt": p, "raw_prompt": True}, default_priority) for p in prompts]


def job_failure(record: JobRecord) -> ApiError | None:
    """The error to answer for a job that did not succeed (None when it did)."""
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        return None
    if record.status is JobStatus.CANCELLED:
        return ApiError(409, f"job {record.id} was cancelled", code="job_cancelled")
    error = record.error
    if error is not None and error.type == JobErrorType.INVALID_REQUEST:
        return ApiError(400, error.message, code="invalid_request")
    message = error.message if error else f"job {record.id} ended {record.status.value}"
    return ApiError(500, message, code=error.type if error else "job_failed")
