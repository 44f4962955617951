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
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Longest stop string, in characters.
STOP_MAX_CHARS = 256


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

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, s in enumerate(value):
            if not s:
                raise ValueError(f"stop[{i}] must not be empty")
            if len(s) > STOP_MAX_CHARS:
                raise ValueError(f"stop[{i}] is longer than {STOP_MAX_CHARS} characters")
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
