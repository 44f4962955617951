"""The one sampling-parameters contract, from the HTTP body to the sampler.

``SamplingParams`` declares each knob once, with its default, range and description: the API's job
body and job object inherit it, the job record stores it, the engine takes it as it is and the
engine-process wire is its JSON dump. Torch-free, so every process can import it.

``max_new_tokens`` is ``None`` until a deployment resolves it (``resolved``): the API on submit and
``tnllm generate`` for offline runs, so stored records and the engine see an int. Deployment limits
(TNLLM_MAX_NEW_TOKENS_LIMIT, TNLLM_MAX_STOP_STRINGS) are the API's checks, not the contract's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo, field_validator

from tnllm.protocol.formats import ResponseFormat

#: A token id as a key of ``logit_bias``: JSON object keys are strings ("17"), so parsed from one even
#: where the body is otherwise strict.
TokenId = Annotated[int, Strict(False)]
#: Longest stop string, in characters.
STOP_MAX_CHARS = 256
#: The contract's bound on ``n`` (deployments lower it: TNLLM_MAX_N).
N_MAX = 128
#: Most ``logit_bias`` entries (OpenAI's limit).
LOGIT_BIAS_MAX = 300
#: Most ``top_logprobs`` (OpenAI's limit).
TOP_LOGPROBS_MAX = 20


class SamplingParams(BaseModel):
    """How one request samples and when it stops. ``temperature == 0`` means greedy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Tokens to generate at most (default TNLLM_DEFAULT_MAX_NEW_TOKENS)."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(default=0, ge=0, description="Sample among the k most likely tokens; 0 = off.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0, description="1 = off.")
    stop: tuple[str, ...] = Field(
        default_factory=tuple, description="Strings that end generation (not included)."
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="Sampling seed (reproducible runs).")
    ignore_eos: bool = Field(
        default=False, description="Keep generating past the end-of-sequence token, up to max_new_tokens."
    )
    n: int = Field(
        default=1, ge=1, le=N_MAX, description="Choices generated from the one prompt (at most TNLLM_MAX_N)."
    )
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Subtracted from the logit of every token generated so far."
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Times a token's count so far, subtracted from its logit."
    )
    logit_bias: dict[TokenId, float] = Field(
        default_factory=dict,
        description="Token id → bias (-100..100) added to its logit; JSON keys are strings of ints.",
    )
    logprobs: bool = Field(default=False, description="Return each generated token's log probability.")
    top_logprobs: int = Field(
        default=0, ge=0, le=TOP_LOGPROBS_MAX, description="The likeliest tokens per step (needs logprobs)."
    )
    response_format: ResponseFormat | None = Field(
        default=None, description="Constrain the output: text, any JSON object, or JSON matching a schema."
    )

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, s in enumerate(value):
            if not s:
                raise ValueError(f"stop[{i}] must not be empty")
            if len(s) > STOP_MAX_CHARS:
                raise ValueError(f"stop[{i}] is longer than {STOP_MAX_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[int, float]) -> dict[int, float]:
        if len(value) > LOGIT_BIAS_MAX:
            raise ValueError(f"at most {LOGIT_BIAS_MAX} entries (got {len(value)})")
        for token, bias in value.items():
            if token < 0:
                raise ValueError(f"token id {token} is negative")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias of token {token} must be within -100..100 (got {bias:g})")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int, info: ValidationInfo) -> int:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return value

    def resolved(self, default_max_new_tokens: int) -> Self:
        """A copy with ``max_new_tokens`` set: the deployment's default where it is None."""
        if self.max_new_tokens is not None:
            return self
        return self.model_copy(update={"max_new_tokens": default_max_new_tokens})

    def sampling(self) -> SamplingParams:
        """Only the sampling fields (of a job body or record that composes this contract)."""
        if type(self) is SamplingParams:
            return self
        return SamplingParams.model_validate(self.model_dump(include=set(SAMPLING_FIELDS)))


#: The field names of the contract, in declaration order.
SAMPLING_FIELDS: frozenset[str] = frozenset(SamplingParams.model_fields)


def error_message(exc: ValidationError) -> str:
    """``field: message`` of the first error, as the HTTP API words a 422 (``stop[0]: ...``)."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    err = errors[0]
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{field_path(err.get('loc', ()))}: {message}"


def field_path(loc: Sequence[Any]) -> str:
    """``("messages", 0, "role")`` → ``messages[0].role``; an empty location → ``body``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def resolved_schema(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of models that show stored parameters: ``max_new_tokens`` is an int
    there (resolved on submit), and every sampling field that is never null is required (it is
    always sent), so it has no default."""
    props = schema.get("properties", {})
    limit = props.get("max_new_tokens", {})
    for variant in limit.pop("anyOf", []):
        if variant.get("type") != "null":
            limit.update(variant)
    never_null = {"max_new_tokens"} | {
        name for name, f in SamplingParams.model_fields.items() if f.default is not None
    }
    for name in never_null:
        props.get(name, {}).pop("default", None)
    required = set(schema.get("required", [])) | never_null
    schema["required"] = [name for name in props if name in required]
