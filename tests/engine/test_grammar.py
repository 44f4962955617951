"""response_format on the random-weight demo model: the grammar's masks make the output valid JSON
that validates against the schema, and end it; a schema that cannot compile is refused up front."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tnllm.engine import EngineRequest, SamplingParams
from tnllm.errors import RequestRejected

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pet": {"enum": ["cat", "dog", "none"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}


def fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def request(rid: str, prompt: list[int], **kw: Any) -> EngineRequest:
    return EngineRequest.from_json(rid, prompt, {"max_new_tokens": 200, **kw})


def test_json_schema_output_validates_and_ends_the_choice(make_engine: Any) -> None:
    reqs = [
        request("greedy", [5, 6, 7], response_format=fmt(SCHEMA)),
        request("hot", [9, 3], response_format=fmt(SCHEMA), temperature=1.5, seed=2, n=3),
        request("plain", [5, 6, 7]),  # unconstrained rows share the batch
    ]
    results = make_engine(slots=8).generate(reqs)
    for res in results[:2]:
        for c in res.choices:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), SCHEMA)
    assert results[2].choices[0].text != results[0].text


def test_json_object_gives_an_object_or_is_cut_by_the_length_limit(make_engine: Any) -> None:
    """Any object is unbounded (free keys and strings): at the budget it ends 'length', and the
    JSON may be cut there (documented); when it ends 'stop' it parses."""
    res = make_engine().generate(
        [request("o", [5, 6], response_format={"type": "json_object"}, max_new_tokens=40)]
    )[0]
    assert res.text.startswith("{")
    if res.finish_reason == "stop":
        assert isinstance(json.loads(res.text), dict)
    else:
        assert res.finish_reason == "length" and len(res.token_ids) == 40


def test_ignore_eos_does_not_outlive_the_grammar(make_engine: Any) -> None:
    res = make_engine().generate([request("i", [8], response_format=fmt(SCHEMA), ignore_eos=True)])[0]
    assert res.finish_reason == "stop"
    jsonschema.validate(json.loads(res.text), SCHEMA)


def test_a_schema_that_cannot_compile_is_refused_naming_why(make_engine: Any) -> None:
    engine = make_engine()
    with pytest.raises(RequestRejected, match=r"response_format: the JSON schema cannot be compiled: .*foo"):
        engine.submit(request("bad", [5], response_format=fmt({"type": "foo"})))
    with pytest.raises(RequestRejected, match="response_format: needs a tokenizer"):
        make_engine(tokenizer=False).submit(request("t", [5], response_format={"type": "json_object"}))
    text = SamplingParams.model_validate({"response_format": {"type": "text"}})
    assert engine.generate([EngineRequest("txt", [5], text.resolved(4))])[0].finish_reason == "length"
