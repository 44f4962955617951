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
