"""Prefix and conversation states in the engine: every reuse equals a recompute, token for token."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.engine.conftest import greedy as greedy_params
from tests.engine.conftest import prompts
from tnllm.engine import Engine, EngineRequest, SamplingParams
from tnllm.engine.states import StateBudgets, StateStore, model_fingerprint

BIG = 1 << 30


def states(model: Any, device: int = BIG, host: int = 0) -> StateStore:
    return StateStore(
        model_fingerprint(model, torch.float32), device=torch.device("cpu"), dtype=torch.float32,
        budgets=StateBudgets(device=device, host=host, disk=0),
    )  # fmt: skip


def engine(model: Any, tok: Any, store: StateStore | None, overlap: bool = True) -> Engine:
    return Engine(model, tok, slots=4, prefill_token_budget=16, overlap=overlap, states=store)


def run(e: Engine, req: EngineRequest) -> Any:
    [result] = e.generate([req])
    return result


def greedy(prompt: list[int], n: int, rid: str, **kw: Any) -> EngineRequest:
    """``conftest.greedy`` with the state-reuse fields of the request."""
    req = greedy_params(prompt, n, rid)
    return EngineRequest(rid, prompt, req.params, **kw)


def sampled(prompt: list[int], n: int, rid: str, **kw: Any) -> EngineRequest:
    params = SamplingParams(max_new_tokens=n, temperature=0.9, top_k=20, seed=1234, ignore_eos=True)
    return EngineRequest(rid, prompt, params, **kw)


@pytest.fixture
def long_prompts(engine_model: Any) -> list[list[int]]:
    return prompts(3, int(engine_model.config.vocab_size), seed=7, min_len=40, max_len=40)


def test_a_shared_prefix_is_prefilled_once(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any
) -> None:
    head = long_prompts[0][:35]  # not a multiple of the 16-token budget
    a, b = head + long_prompts[1][:9], head + long_prompts[2][:5]
    e = engine(engine_model, engine_tokenizer, states(engine_model))
    first = run(e, greedy(a, 12, "a", cache_points=(len(head),)))
    before = e.stats().prefill_tokens
    second = run(e, greedy(b, 12, "b"))
    assert first.cached_tokens == 0 and second.cached_tokens == len(head)
    assert e.stats().prefill_tokens - before == len(b) - len(head)
    plain = engine(engine_model, engine_tokenizer, None)
    assert second.token_ids == run(plain, greedy(b, 12, "b")).token_ids


def test_chunk_ends_are_saved_without_cache_points(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any
) -> None:
    e = engine(engine_model, engine_tokenizer, states(engine_model))
    run(e, greedy(long_prompts[0], 4, "a"))  # chunks end at 16, 32, 40
    b = long_prompts[0][:35] + long_prompts[1][:6]
    assert run(e, greedy(b, 4, "b")).cached_tokens == 32


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_a_continued_conversation_equals_its_recompute(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any, overlap: bool, kind: str
) -> None:
    make = greedy if kind == "greedy" else sampled
    e = engine(engine_model, engine_tokenizer, states(engine_model), overlap=overlap)
    plain = engine(engine_model, engine_tokenizer, None, overlap=overlap)
    conv = long_prompts[0][:20]
    previous = 0
    for turn in range(3):
        result = run(e, make(conv, 9, f"t{turn}"))
        assert result.token_ids == run(plain, make(conv, 9, f"t{turn}")).token_ids
        if turn:
            assert result.cached_tokens >= previous, "the earlier turn's tokens came from its state"
        previous = len(conv) + len(result.token_ids) - 1
        conv = [*conv, *result.token_ids, *long_prompts[1][turn : turn + 3]]


def test_state_cache_false_neither_reads_nor_writes(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any
) -> None:
    store = states(engine_model)
    e = engine(engine_model, engine_tokenizer, store)
    run(e, greedy(long_prompts[0], 4, "a"))
    n = len(store)
    again = run(e, greedy(long_prompts[0], 4, "b", state_cache=False))
    assert again.cached_tokens == 0 and len(store) == n
    assert run(e, greedy(long_prompts[0], 4, "c")).cached_tokens == 32


def test_a_pinned_prompt_survives_pressure_until_unpinned(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any
) -> None:
    one = int(engine_model.state_bytes_per_sequence())
    store = states(engine_model, device=3 * one)
    e = engine(engine_model, engine_tokenizer, store)
    head = long_prompts[0][:30]
    run(e, greedy(head, 1, "pin", pin="p1"))
    [key] = store.pinned("p1")
    for i, p in enumerate(prompts(6, int(engine_model.config.vocab_size), seed=3, min_len=20, max_len=30)):
        run(e, greedy(p, 3, f"x{i}"))
    assert key in store
    assert run(e, greedy([*head, 5, 6], 3, "hit")).cached_tokens == len(head)
    assert e.unpin("p1") == 1
    for i, p in enumerate(prompts(6, int(engine_model.config.vocab_size), seed=4, min_len=20, max_len=30)):
        run(e, greedy(p, 3, f"y{i}"))
    assert key not in store


def test_states_shorter_than_min_tokens_are_not_saved_unless_pinned(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any
) -> None:
    store = states(engine_model)
    store.min_tokens = 30
    e = engine(engine_model, engine_tokenizer, store)
    run(e, greedy(long_prompts[0][:20], 5, "short"))  # prompt 20, final state 24 tokens
    assert len(store) == 0
    run(e, greedy(long_prompts[1][:20], 1, "pin", pin="p"))
    assert len(store) == 1 and store.pinned("p")
    run(e, greedy(long_prompts[2], 4, "long"))  # chunk ends 16 (< 30: skipped), 32, 40, final 43
    assert len(store) == 4


def test_states_on_disk_serve_the_engine_after_a_restart(
    engine_model: Any, engine_tokenizer: Any, long_prompts: Any, tmp_path: Any
) -> None:
    from tnllm.config import Settings
    from tnllm.engine.factory import build_state_store

    one = int(engine_model.state_bytes_per_sequence())
    config = Settings(
        data_dir=tmp_path,
        state_cache_device_bytes=one,
        state_cache_host_bytes=0,
        state_cache_disk_bytes=50 * one,
    ).engine_config()
    cpu = torch.device("cpu")
    first = build_state_store(config, engine_model, cpu, torch.float32)
    assert first is not None
    run(engine(engine_model, engine_tokenizer, first), greedy(long_prompts[0], 6, "a"))
    assert first.stats()["disk"]["entries"] >= 3  # spilled: the device tier holds one state
    again = build_state_store(config, engine_model, cpu, torch.float32)  # a new engine process
    assert again is not None and len(again) == first.stats()["disk"]["entries"]  # files only
    prompt = [*long_prompts[0], *long_prompts[1][:5]]
    resumed = run(engine(engine_model, engine_tokenizer, again), greedy(prompt, 6, "b"))
    assert resumed.cached_tokens >= len(long_prompts[0])
    assert (
        resumed.token_ids
        == run(engine(engine_model, engine_tokenizer, None), greedy(prompt, 6, "b")).token_ids
    )
    assert again.stats()["disk"]["hits"] == 1
    assert (
        build_state_store(config.model_copy(update={"state_cache": False}), engine_model, cpu, torch.float32)
        is None
    )


def test_n_choices_start_from_a_saved_prefix_and_equal_the_recompute(
    engine_model: Any, engine_tokenizer: Any
) -> None:
    """A request with n = 3 whose prompt extends a saved one: choice 0 starts from the saved state,
    prefills only the rest, and the forked choices equal their runs without any reuse."""
    base = prompts(1, engine_model.config.vocab_size, seed=21, min_len=20, max_len=20)[0]
    e = engine(engine_model, engine_tokenizer, states(engine_model))
    run(e, greedy(base, 4, "first"))  # saves the states of the prompt's chunks
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5, n=3, ignore_eos=True)
    got = run(e, EngineRequest("again", [*base, 7, 8], params))
    want = run(engine(engine_model, engine_tokenizer, None), EngineRequest("plain", [*base, 7, 8], params))
    assert got.cached_tokens > 0 and want.cached_tokens == 0
    assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]
    assert e.stats().forked_choices == 2
