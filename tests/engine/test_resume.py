"""Resuming a request from the tokens an earlier run streamed (crash resume), against the real
tiny model: the result and the deltas after the cut equal the uninterrupted run's, token for token."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.engine.conftest import prompts
from tests.engine.test_grammar import SCHEMA
from tnllm.engine import Engine, EngineRequest, SamplingParams
from tnllm.engine.types import TokenEvent
from tnllm.errors import RequestRejected

CASES = {
    "greedy": {"temperature": 0.0},
    "seeded": {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 1234},
    "penalised": {"temperature": 0.7, "seed": 5, "repetition_penalty": 1.3},
    # the count pool row of a resumed choice starts with its earlier tokens counted
    "counted": {
        "temperature": 0.8,
        "seed": 7,
        "presence_penalty": 0.9,
        "frequency_penalty": 0.7,
        "logit_bias": {5: 3.0},
    },
}


def run(engine: Engine, req: EngineRequest) -> tuple[Any, list[TokenEvent]]:
    events: list[TokenEvent] = []
    handle = engine.submit(req, on_token=events.append)
    while not handle.done():
        engine.step()
    return handle.result(), events


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_request_continues_exactly_where_the_stream_stopped(make_engine: Any, case: str) -> None:
    prompt = prompts(1, 1024, seed=3, min_len=20, max_len=20)[0]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True, **CASES[case])
    full, events = run(make_engine(slots=2), EngineRequest("full", prompt, params))
    assert len(full.token_ids) == 24
    for cut in (1, 7, 23, 24):
        req = EngineRequest(f"r{cut}", prompt, params, resume_ids=full.token_ids[:cut])
        engine = make_engine(slots=2)
        again, tail = run(engine, req)
        assert again.token_ids == full.token_ids, (case, cut)
        assert again.text == full.text and again.completion_tokens == 24
        assert again.prompt_tokens == len(prompt)
        # the resumed run emits only what the stream did not have yet: no repeated text
        assert [e.token_ids for e in tail] == [e.token_ids for e in events[cut:]]
        assert "".join(e.text for e in tail) == "".join(e.text for e in events[cut:])
        assert engine.stats().resumed_tokens == cut


def test_resuming_mid_text_keeps_the_held_back_text_and_stop_strings(make_engine: Any) -> None:
    """A stop string and held-back text across the cut: the detokeniser state is rebuilt from the ids."""
    prompt = prompts(1, 1024, seed=8, min_len=12, max_len=12)[0]
    plain = SamplingParams(max_new_tokens=40, ignore_eos=True)
    free, _ = run(make_engine(), EngineRequest("f", prompt, plain))
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 4]
    assert stop.strip(), free.text
    params = SamplingParams(max_new_tokens=40, ignore_eos=True, stop=[stop])
    full, events = run(make_engine(), EngineRequest("s", prompt, params))
    assert full.finish_reason == "stop" and stop not in full.text
    held = [i for i, e in enumerate(events) if not e.text]  # tokens whose text was held back
    assert held, "the case must cross a held-back delta"
    for cut in range(1, len(full.token_ids) + 1):
        again, tail = run(make_engine(), EngineRequest("r", prompt, params, resume_ids=full.token_ids[:cut]))
        assert (again.text, again.token_ids, again.finish_reason) == (full.text, full.token_ids, "stop")
        assert "".join(e.text for e in tail) == "".join(e.text for e in events[cut:])


def test_a_resumed_choice_counts_its_earlier_tokens_for_its_penalties(make_engine: Any) -> None:
    """Presence/frequency penalties: the resumed slot's count row starts with the earlier ids."""
    prompt = prompts(3, 1024, seed=22, min_len=10, max_len=20)[0]
    free = SamplingParams(max_new_tokens=40, ignore_eos=True, temperature=0.8, top_p=0.95, seed=99)
    params = free.model_copy(update={"presence_penalty": 2.0, "frequency_penalty": 1.5})
    full, _ = run(make_engine(), EngineRequest("full", prompt, params))
    plain, _ = run(make_engine(), EngineRequest("free", prompt, free))
    assert plain.token_ids != full.token_ids  # the penalties change this run
    for cut in range(1, 40, 3):
        again, _ = run(make_engine(), EngineRequest("r", prompt, params, resume_ids=full.token_ids[:cut]))
        assert again.token_ids == full.token_ids, cut


def test_a_resumed_grammar_goes_on_where_it_was(make_engine: Any) -> None:
    """response_format: the earlier ids are replayed through the matcher, so the masks after the cut
    are the uninterrupted run's (seeded draws, every few cut points)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}}
    params = SamplingParams.model_validate(
        {"max_new_tokens": 120, "temperature": 1.2, "seed": 3, "response_format": fmt}
    )
    prompt = prompts(1, 1024, seed=5, min_len=8, max_len=8)[0]
    full, _ = run(make_engine(), EngineRequest("g", prompt, params))
    assert full.finish_reason == "stop" and len(full.token_ids) > 6
    jsonschema.validate(json.loads(full.text), SCHEMA)
    for cut in (1, len(full.token_ids) // 2, len(full.token_ids) - 1):
        again, _ = run(make_engine(), EngineRequest("r", prompt, params, resume_ids=full.token_ids[:cut]))
        assert (again.token_ids, again.text, again.finish_reason) == (full.token_ids, full.text, "stop"), cut


def test_resume_ids_are_checked(make_engine: Any) -> None:
    engine = make_engine()
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(RequestRejected, match="exceed max_new_tokens"):
        engine.submit(EngineRequest("a", [5, 6], params, resume_ids=[7, 8, 9]))
    with pytest.raises(RequestRejected, match="outside the vocabulary"):
        engine.submit(EngineRequest("b", [5, 6], params, resume_ids=[10**6]))
    with pytest.raises(RequestRejected, match="n > 1"):
        engine.submit(EngineRequest("c", [5, 6], params.model_copy(update={"n": 2}), resume_ids=[7]))
