"""``response_format``: OpenAI's shape of constrained output (plain text, any JSON object, or JSON
matching a schema), a discriminated union on ``type``. Torch-free; the engine compiles it into a
grammar (``tnllm.engine.grammar``) and the API may compile-check a schema on submit."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextFormat(BaseModel):
    """Unconstrained text (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text"] = "text"


class JsonObjectFormat(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["json_object"] = "json_object"


class JsonSchemaSpec(BaseModel):
    """OpenAI's ``json_schema`` object: a named JSON Schema the output must validate against."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    name: str = Field(min_length=1, max_length=64, description="The schema's name.")
    # ``schema`` shadows a BaseModel attribute in pydantic, hence the alias
    json_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="The JSON Schema the output must satisfy."
    )
    strict: bool | None = Field(default=None, description="Accepted; the output always follows the schema.")
    description: str | None = None


class JsonSchemaFormat(BaseModel):
    """JSON that validates against ``json_schema.schema``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["json_schema"] = "json_schema"
    json_schema: JsonSchemaSpec


#: ``{"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema": {...}}``.
ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


def constrains(fmt: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> bool:
    """True when the format needs a grammar (anything but absent or ``text``)."""
    return fmt is not None and fmt.type != "text"


#: JSON compile options: no free whitespace, so a grammar with bounded values forces the output to
#: end (a model could otherwise emit spaces forever); a schema's ``x-guidance`` may override them.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


def grammar_of(fmt: JsonObjectFormat | JsonSchemaFormat) -> str:
    """The llguidance grammar of a constraining format (imports llguidance, not torch).

    ValueError naming the problem when it cannot be compiled (checked without a tokenizer)."""
    from llguidance import LLMatcher

    schema = {"type": "object"} if isinstance(fmt, JsonObjectFormat) else fmt.json_schema.json_schema
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"the JSON schema cannot be compiled: {exc}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ValueError(f"the JSON schema cannot be compiled: {problem.strip()}")
    return grammar
