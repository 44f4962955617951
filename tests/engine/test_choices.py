"""n > 1 choices: one prefill whose state is copied into n slots, each choice checked token for token
against a recompute from scratch (the full forward, no state reuse) with the counter-based draw of
(seed, choice, step)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.engine.conftest import greedy, prompts
from tnllm.engine import EngineRequest, SamplingParams
from tnllm.engine.sampling import draw, uniforms_for
from tnllm.errors import RequestRejected


def choices(prompt: list[int], tokens: int, *args: Any) -> EngineRequest:
    """A greedy request (EOS ignored) for ``n`` choices: ``(prompt, tokens, [rid,] n)``."""
    rid, n = ("r", *args) if len(args) == 1 else args
    return EngineRequest(rid, prompt, SamplingParams(max_new_tokens=tokens, n=n, ignore_eos=True))


def recompute(
    model: Any, prompt: list[int], steps: int, temperature: float, seed: int, choice: int
) -> list[int]:
    """The slow reference: the whole sequence from scratch every token, then the (seed, choice,
    step) draw of the exponential race (greedy when temperature is 0)."""
    ids = list(prompt)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        for t in range(steps):
            logits = model(torch.tensor([ids]))[0, -1].float()
            if temperature <= 0:
                ids.append(int(logits.argmax()))
                continue
            probs = torch.softmax(logits / temperature, -1)
            ids.append(int(draw(probs[None], uniforms_for(seed, choice, t, vocab)[None])[0]))
    return ids[len(prompt) :]


def test_n_greedy_gives_n_equal_choices_from_one_prefill(make_engine: Any, engine_model: Any) -> None:
    prompt = prompts(1, engine_model.config.vocab_size, seed=3, min_len=11, max_len=11)[0]
    engine = make_engine(slots=4, budget=4)  # a chunked prompt: the copy comes after its last chunk
    res = engine.generate([choices(prompt, 10, 3)])[0]
    want = recompute(engine_model, prompt, 10, 0.0, 0, 0)
    assert [c.index for c in res.choices] == [0, 1, 2]
    assert all(c.token_ids == want and c.finish_reason == "length" for c in res.choices)
    assert res.token_ids == want and res.text == res.choices[0].text
    assert (res.prompt_tokens, res.completion_tokens) == (11, 30)
    stats = engine.stats()
    assert (stats.prefills, stats.forked_choices) == (1, 2)


def test_seeded_choices_equal_their_recompute_and_choice_0_equals_n_1(
    make_engine: Any, engine_model: Any
) -> None:
    prompt = [7, 31, 5, 64]
    params = dict(max_new_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    crowd = [greedy(p, 9, rid=f"g{i}") for i, p in enumerate(prompts(3, 99, seed=8))]  # slots move around
    engine = make_engine(slots=8)
    res = engine.generate([*crowd, EngineRequest("n3", prompt, SamplingParams(n=3, **params))])[-1]  # type: ignore[arg-type]
    got = [c.token_ids for c in res.choices]
    assert got == [recompute(engine_model, prompt, 12, 1.0, 1234, i) for i in range(3)]
    assert len({tuple(g) for g in got}) == 3  # each choice its own draws
    alone = make_engine(slots=1).generate([EngineRequest("n1", prompt, SamplingParams(**params))])[0]  # type: ignore[arg-type]
    assert alone.token_ids == got[0]


def test_a_request_waits_for_n_free_slots_and_n_over_slots_is_refused(make_engine: Any) -> None:
    engine = make_engine(slots=3)
    with pytest.raises(RequestRejected, match="n: 4 choices need 4 engine slots, and this engine has 3"):
        engine.submit(choices([5, 6], 4, 4))
    first = engine.submit(choices([5, 6], 6, "a", 2))
    engine.step()
    second = engine.submit(choices([9, 8], 3, "b", 2))
    engine.step()
    assert engine.stats().waiting == 1 and engine.sched.num_active == 2  # b needs 2 slots, 1 is free
    while not second.done():
        engine.step()
    assert first.done()  # b ran only after a left
    assert [len(c.token_ids) for c in second.result(0).choices] == [3, 3]


def test_cancel_ends_every_choice(make_engine: Any) -> None:
    engine = make_engine(slots=4)
    handle = engine.submit(choices([5, 6, 7], 50, 3))
    for _ in range(3):
        engine.step()
    engine.cancel("r")
    while not handle.done():
        engine.step()
    res = handle.result(0)
    assert res.finish_reason == "cancelled" and {c.finish_reason for c in res.choices} == {"cancelled"}
    assert engine.sched.num_active == 0 and len(engine.sched._free) == 4


def test_streamed_deltas_carry_their_choice(make_engine: Any) -> None:
    engine = make_engine(slots=4)
    events: list[Any] = []
    handle = engine.submit(
        EngineRequest(
            "s", [5, 6], SamplingParams(max_new_tokens=8, temperature=1.0, seed=3, n=2, ignore_eos=True)
        ),
        on_token=events.append,
    )
    while not handle.done():
        engine.step()
    res = handle.result(0)
    for c in res.choices:
        mine = [e for e in events if e.index == c.index]
        assert "".join(e.text for e in mine) == c.text
        assert [t for e in mine for t in e.token_ids] == c.token_ids
