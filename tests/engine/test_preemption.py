"""Priority preemption without recompute on the real tiny model: a higher-priority request takes a
busy slot within one step; the preempted sequence's state waits in host memory and comes back, and
its result equals a run that was never preempted, token for token (greedy and seeded)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine.conftest import prompts
from tests.engine.test_grammar import SCHEMA
from tnllm.engine import Engine, EngineRequest, SamplingParams

GREEDY = SamplingParams(max_new_tokens=30, ignore_eos=True)
SEEDED = SamplingParams(max_new_tokens=30, ignore_eos=True, temperature=0.8, top_p=0.95, seed=99)


def make(engine_model: Any, engine_tokenizer: Any, *, slots: int, gap: int | None, overlap: bool) -> Engine:
    return Engine(engine_model, engine_tokenizer, slots=slots, prefill_token_budget=64,
                  overlap=overlap, preempt_gap=gap)  # fmt: skip


def alone(engine_model: Any, engine_tokenizer: Any, req: EngineRequest) -> Any:
    engine = make(engine_model, engine_tokenizer, slots=1, gap=None, overlap=False)
    return engine.generate([EngineRequest(req.request_id, req.prompt_ids, req.params)])[0]


@pytest.mark.parametrize("overlap", [True, False])
def test_a_priority_9_request_preempts_within_one_step_and_nobody_recomputes(
    engine_model: Any, engine_tokenizer: Any, overlap: bool
) -> None:
    engine = make(engine_model, engine_tokenizer, slots=2, gap=1, overlap=overlap)
    ps = prompts(3, 1024, seed=21, min_len=10, max_len=30)
    low = [EngineRequest("g0", ps[0], GREEDY), EngineRequest("s0", ps[1], SEEDED)]
    handles = [engine.submit(r) for r in low]
    for _ in range(6):
        engine.step()
    assert all(len(engine.sched.get(r.request_id).output_ids) >= 3 for r in low)  # type: ignore[union-attr]
    urgent = EngineRequest("u9", ps[2], SEEDED.model_copy(update={"seed": 5}), priority=9)
    steps = engine.stats().steps
    hurry = engine.submit(urgent)
    engine.step()
    seq = engine.sched.get("u9")
    assert seq is not None and seq.slot >= 0 and seq.prefill_done  # admitted and prefilled: one step
    assert engine.stats().steps == steps + 1 and engine.stats().preemptions == 1
    victim = engine.sched.get("s0")  # the latest admitted of the lowest priority
    assert victim is not None and victim.parked and victim.slot == -1
    while not all(h.done() for h in [*handles, hurry]):
        engine.step()
    assert engine.stats().generated_tokens == 3 * 30  # no token sampled twice
    for req, h in zip([*low, urgent], [*handles, hurry], strict=True):
        got, ref = h.result(), alone(engine_model, engine_tokenizer, req)
        assert (got.token_ids, got.text) == (ref.token_ids, ref.text), req.request_id


def test_the_gap_and_the_switch_bound_preemption(engine_model: Any, engine_tokenizer: Any) -> None:
    ps = prompts(2, 1024, seed=4, min_len=8, max_len=8)
    for gap, priority, preempts in [(3, 2, False), (3, 3, True), (None, 9, False)]:
        engine = make(engine_model, engine_tokenizer, slots=1, gap=gap, overlap=True)
        first = engine.submit(EngineRequest("a", ps[0], GREEDY))
        for _ in range(3):
            engine.step()
        second = engine.submit(EngineRequest("b", ps[1], GREEDY, priority=priority))
        engine.step()
        assert engine.stats().preemptions == int(preempts), (gap, priority)
        while not (first.done() and second.done()):
            engine.step()
        ref = alone(engine_model, engine_tokenizer, EngineRequest("a", ps[0], GREEDY))
        assert first.result().token_ids == ref.token_ids


def test_waiting_requests_are_admitted_by_priority_then_fifo(
    engine_model: Any, engine_tokenizer: Any
) -> None:
    engine = make(engine_model, engine_tokenizer, slots=1, gap=None, overlap=False)
    ps = prompts(4, 1024, seed=6, min_len=4, max_len=4)
    order: list[str] = []
    reqs = [EngineRequest(rid, p, SamplingParams(max_new_tokens=2), priority=pr)
            for rid, p, pr in zip(["a", "b", "c", "d"], ps, [0, 0, 5, 5], strict=True)]  # fmt: skip
    for r in reqs:
        engine.submit(r, on_done=lambda h: order.append(h.request_id))
    while len(order) < 4:
        engine.step()
    assert order == ["c", "d", "a", "b"]


@pytest.mark.parametrize("last", ["c0", "j0"])  # the latest admitted is the one preempted
def test_a_preempted_row_keeps_its_counts_grammar_and_logprobs(
    engine_model: Any, engine_tokenizer: Any, last: str
) -> None:
    """The parked slot's count pool row goes to host memory with its state, the grammar matcher and
    the logprobs stay with the sequence: the preempted rows equal runs never preempted."""
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}}
    counted = SEEDED.model_copy(update={"presence_penalty": 2.0, "frequency_penalty": 1.5, "logprobs": True,
                                        "top_logprobs": 2})  # fmt: skip
    grammar = SamplingParams.model_validate({"max_new_tokens": 80, "temperature": 1.1, "seed": 4,
                                             "response_format": fmt})  # fmt: skip
    engine = make(engine_model, engine_tokenizer, slots=2, gap=1, overlap=True)
    ps = prompts(3, 1024, seed=22, min_len=10, max_len=20)
    low = [EngineRequest("c0", ps[0], counted), EngineRequest("j0", ps[1], grammar)]
    low.sort(key=lambda r: r.request_id == last)
    handles = [engine.submit(r) for r in low]
    for _ in range(16):  # c0 has drawn a token its penalties hold against it (token 17)
        engine.step()
    urgent = EngineRequest("u9", ps[2], GREEDY, priority=9)
    hurry = engine.submit(urgent)
    engine.step()
    assert engine.stats().preemptions == 1 and engine.sched.get(last).parked  # type: ignore[union-attr]
    while not all(h.done() for h in [*handles, hurry]):
        engine.step()
    for req, h in zip([*low, urgent], [*handles, hurry], strict=True):
        got, ref = h.result(), alone(engine_model, engine_tokenizer, req)
        assert (got.token_ids, got.text) == (ref.token_ids, ref.text), req.request_id
        mine, theirs = got.choices[0].logprobs or [], ref.choices[0].logprobs or []
        assert [e.token_id for e in mine] == [e.token_id for e in theirs]
        # batch composition moves float32 logits by rounding only
        assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(mine, theirs, strict=True))
        assert bool(mine) == (req.request_id == "c0")


def test_a_request_with_n_choices_is_never_parked(engine_model: Any, engine_tokenizer: Any) -> None:
    """All of a request's choices or none: an n = 2 request is not preempted, the urgent one waits."""
    engine = make(engine_model, engine_tokenizer, slots=2, gap=1, overlap=False)
    ps = prompts(2, 1024, seed=23, min_len=10, max_len=20)
    pair = EngineRequest("n2", ps[0], SEEDED.model_copy(update={"n": 2, "max_new_tokens": 12}))
    handle = engine.submit(pair)
    for _ in range(3):
        engine.step()
    hurry = engine.submit(EngineRequest("u9", ps[1], GREEDY, priority=9))
    engine.step()
    assert engine.stats().preemptions == 0 and engine.sched.get("u9").slot == -1  # type: ignore[union-attr]
    while not (handle.done() and hurry.done()):
        engine.step()
    ref = make(engine_model, engine_tokenizer, slots=2, gap=None, overlap=False).generate([pair])[0]
    assert [c.token_ids for c in handle.result().choices] == [c.token_ids for c in ref.choices]
