"""One sampling contract: every model that carries the knobs composes SamplingParams (same fields,
defaults, ranges and descriptions), the stored JSON stays flat, the engine wire is its dump."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from tnllm.api.schemas import JobCreate
from tnllm.config import Settings
from tnllm.engine.types import EngineRequest
from tnllm.engine.wire import request_from_wire, request_to_wire
from tnllm.errors import RequestRejected
from tnllm.protocol.jobs import GenerationParams, JobPublic
from tnllm.protocol.sampling import SAMPLING_FIELDS, SamplingParams, error_message

COMPOSERS: list[type[BaseModel]] = [JobCreate, GenerationParams, JobPublic]

#: One out-of-range value per constrained field, and the message every path gives for it.
BAD_VALUES = [
    ("max_new_tokens", 0, "max_new_tokens: Input should be greater than or equal to 1"),
    ("temperature", 5.5, "temperature: Input should be less than or equal to 5"),
    ("top_p", 0.0, "top_p: Input should be greater than 0"),
    ("top_k", -1, "top_k: Input should be greater than or equal to 0"),
    ("repetition_penalty", 10.5, "repetition_penalty: Input should be less than or equal to 10"),
    ("seed", 2**63, "seed: Input should be less than 9223372036854775808"),
    ("stop", [""], "stop: stop[0] must not be empty"),
    ("stop", ["x" * 257], "stop: stop[0] is longer than 256 characters"),
]


@pytest.mark.parametrize("model", COMPOSERS, ids=lambda m: m.__name__)
def test_every_carrier_composes_the_one_contract(model: type[BaseModel]) -> None:
    assert issubclass(model, SamplingParams)
    assert set(model.model_fields) >= SAMPLING_FIELDS
    for name, field in SamplingParams.model_fields.items():
        # inherited, not re-declared: the same field (type, default, range, description)
        assert repr(model.model_fields[name]) == repr(field), name


def test_defaults_are_declared_once() -> None:
    bare = SamplingParams()
    assert bare.max_new_tokens is None  # "the deployment's default", resolved once
    body = JobCreate(prompt="hi")
    assert body.sampling() == bare == GenerationParams(prompt="hi").sampling()
    assert bare.resolved(17).max_new_tokens == 17 and bare.resolved(17).sampling() == bare.resolved(17)
    assert SamplingParams(max_new_tokens=3).resolved(17).max_new_tokens == 3


def test_the_contract_is_immutable_and_closed() -> None:
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValidationError):
        params.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SamplingParams.model_validate({"max_new_tokens": 4, "beam_width": 2})


def test_the_body_schema_of_each_knob_is_the_contracts() -> None:
    contract = SamplingParams.model_json_schema()["properties"]
    body = JobCreate.model_json_schema()["properties"]
    for name in SAMPLING_FIELDS:
        assert body[name] == contract[name], name


def test_the_stored_json_stays_flat() -> None:
    params = GenerationParams(prompt="p", max_new_tokens=9, stop=("a",), seed=3, ignore_eos=True)
    stored = json.loads(params.model_dump_json())
    assert set(stored) == SAMPLING_FIELDS | {"prompt", "messages", "continue_from", "state_cache"}
    assert stored["stop"] == ["a"] and stored["ignore_eos"] is True
    # a record written before ignore_eos existed still reads
    del stored["ignore_eos"]
    assert GenerationParams.model_validate_json(json.dumps(stored)).ignore_eos is False


def test_the_engine_takes_the_records_params_as_they_are() -> None:
    record = GenerationParams(prompt="p", max_new_tokens=9, temperature=0.3, stop=("x",), ignore_eos=True)
    req = EngineRequest("j:0", [1, 2], record.sampling())
    assert type(req.params) is SamplingParams
    assert req.params.model_dump() == record.model_dump(include=SAMPLING_FIELDS)
    wire = request_to_wire(req)
    assert wire["params"] == req.params.model_dump(mode="json")
    assert request_from_wire(json.loads(json.dumps(wire))) == req


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_an_out_of_range_value_is_refused_alike_everywhere(name: str, value: object, message: str) -> None:
    """The contract, the job body and the engine's side of the wire give the same message."""
    good = {"max_new_tokens": 4}
    with pytest.raises(ValidationError) as contract:
        SamplingParams.model_validate({**good, name: value})
    assert error_message(contract.value) == message
    with pytest.raises(ValidationError) as body:
        JobCreate.model_validate({"prompt": "hi", **good, name: value})
    assert error_message(body.value) == message
    with pytest.raises(RequestRejected) as engine:
        EngineRequest.from_json("r", [5], {**good, name: value})
    assert str(engine.value) == message
    wire = {"id": "r", "prompt_ids": [5], "params": {**good, name: value}}
    with pytest.raises(RequestRejected, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
        request_from_wire(wire)


def test_settings_default_is_the_only_max_new_tokens_default() -> None:
    """No model carries a number of its own: only Settings.default_max_new_tokens does."""
    for model in (SamplingParams, *COMPOSERS):
        assert model.model_fields["max_new_tokens"].default is None
    assert Settings().default_max_new_tokens == 512
