"""Continuous batching gives each request the numbers it gets alone (fp32 CPU: exact greedy ids)."""

from __future__ import annotations

from typing import Any

import torch

from tests.engine.conftest import greedy, prompts
from tnllm.engine import EngineRequest, SamplingParams


def run_alone(make_engine: Any, req: EngineRequest) -> list[int]:
    return make_engine(slots=1, budget=4096).generate([req])[0].token_ids


def test_engine_greedy_matches_full_forward(make_engine: Any, engine_model: Any) -> None:
    prompt = prompts(1, engine_model.config.vocab_size, seed=5, min_len=9, max_len=9)[0]
    got = make_engine(slots=2).generate([greedy(prompt, 12)])[0].token_ids
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(12):  # the slow way: re-run the whole sequence from scratch every token
            ids.append(int(engine_model(torch.tensor([ids]))[0, -1].argmax()))
    assert got == ids[len(prompt) :]


def test_staggered_arrivals_and_departures_equal_runs_alone(make_engine: Any, engine_model: Any) -> None:
    """64 requests, 32 slots, 4 arriving per step, varied lengths: slots are reused mid-generation."""
    vocab = engine_model.config.vocab_size
    ps = prompts(64, vocab, seed=1, max_len=48)
    lengths = [3 + (7 * i) % 29 for i in range(64)]
    reqs = [greedy(p, n, rid=f"q{i}") for i, (p, n) in enumerate(zip(ps, lengths, strict=True))]
    alone = {r.request_id: run_alone(make_engine, r) for r in reqs}

    engine = make_engine(slots=32, budget=24)  # small budget: long prompts are chunked too
    handles, pending, max_active = [], list(reqs), 0
    while pending or not all(h.done() for h in handles):
        for r in pending[:4]:
            handles.append(engine.submit(r))
        pending = pending[4:]
        engine.step()
        max_active = max(max_active, engine.stats().active)
    assert max_active == 32  # the pool was full at some point (others waited)
    for h in handles:
        res = h.result(0)
        assert res.token_ids == alone[h.request_id], h.request_id
        assert res.finish_reason == "length" and res.completion_tokens == len(res.token_ids)


def test_chunked_prefill_equals_unchunked(make_engine: Any, engine_model: Any) -> None:
    # 300 tokens crosses the model's 256-token prefill block; budget 7 makes 43 uneven chunks
    prompt = prompts(1, engine_model.config.vocab_size, seed=3, min_len=300, max_len=300)[0]
    whole = make_engine(slots=1, budget=4096).generate([greedy(prompt, 16)])[0].token_ids
    engine = make_engine(slots=2, budget=7)
    other = engine.submit(greedy([5, 6, 7], 40, rid="decoding-meanwhile"))
    chunked = engine.generate([greedy(prompt, 16)])[0].token_ids
    assert chunked == whole
    assert other.done()  # the short request kept decoding while the long prompt was chunked in


def test_more_requests_than_slots_wait_then_run(make_engine: Any, engine_model: Any) -> None:
    ps = prompts(10, engine_model.config.vocab_size, seed=7, max_len=12)
    reqs = [greedy(p, 6, rid=f"c{i}") for i, p in enumerate(ps)]
    engine = make_engine(slots=4)
    handles = [engine.submit(r) for r in reqs]
    engine.step()
    s = engine.stats()
    assert (s.active, s.waiting, s.slots, s.occupancy) == (4, 6, 4, 1.0)
    while not all(h.done() for h in handles):
        engine.step()
        assert engine.stats().active <= 4
    for r, h in zip(reqs, handles, strict=True):
        assert h.result(0).token_ids == run_alone(make_engine, r)
    s = engine.stats()
    assert (s.active, s.waiting, s.finished_requests, s.generated_tokens) == (0, 0, 10, 60)


def test_seeded_sampling_is_reproducible_in_a_crowd(make_engine: Any, engine_model: Any) -> None:
    vocab = engine_model.config.vocab_size
    params = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, ignore_eos=True)
    target = EngineRequest("target", [11, 12, 13, 14], SamplingParams(seed=1234, **params))  # type: ignore[arg-type]
    alone = run_alone(make_engine, target)

    engine = make_engine(slots=8, budget=16)
    crowd = [
        EngineRequest(f"n{i}", p, SamplingParams(seed=i, **params))  # type: ignore[arg-type]
        for i, p in enumerate(prompts(12, vocab, seed=9))
    ]
    for r in crowd[:5]:
        engine.submit(r)
    engine.step()
    engine.step()
    handle = engine.submit(target)  # arrives mid-generation, others keep arriving after it
    for r in crowd[5:]:
        engine.submit(r)
        engine.step()
    while not handle.done():
        engine.step()
    assert handle.result(0).token_ids == alone

    other_seed = EngineRequest("other", target.prompt_ids, SamplingParams(seed=4321, **params))  # type: ignore[arg-type]
    assert run_alone(make_engine, other_seed) != alone


def test_in_place_decode_on_a_pool_slice_equals_the_gather_path(engine_model: Any) -> None:
    """The engine's fast path (a slice of packed slots, updated in place) computes the same bits."""
    pools = [engine_model.new_state_pool(6), engine_model.new_state_pool(6)]
    for pool in pools:
        g = torch.Generator().manual_seed(0)
        for layer_state in pool:
            layer_state.copy_(torch.randn(layer_state.shape, generator=g))
    ids, pos = torch.tensor([5, 7, 9, 11]), torch.tensor([3, 10, 100, 300])
    with torch.inference_mode():
        a = engine_model.decode(ids, pos, pools[0], torch.arange(4))
        b = engine_model.decode(ids, pos, pools[1], slice(0, 4))
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(*pools, strict=True))
