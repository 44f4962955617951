"""Logprobs (of the raw logits), presence/frequency penalties and logit_bias, each checked against a
recompute through the reference model from scratch."""

from __future__ import annotations

from typing import Any

import torch

from tests.engine.conftest import greedy, prompts
from tnllm.engine import EngineRequest, SamplingParams
from tnllm.engine.sampling import apply_count_penalties, draw, uniforms_for


def full_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0, -1].float().clone()


def test_logprobs_equal_log_softmax_of_the_reference_logits(make_engine: Any, engine_model: Any) -> None:
    prompt = [11, 5, 80, 3]
    res = make_engine().generate([greedy(prompt, 8, logprobs=True, top_logprobs=2)])[0]
    entries = res.choices[0].logprobs
    assert entries is not None and len(entries) == len(res.token_ids) == 8
    ids = list(prompt)
    for tok, e in zip(res.token_ids, entries, strict=True):
        ref = torch.log_softmax(full_logits(engine_model, ids), -1)
        assert e.token_id == tok and e.logprob <= 0
        assert abs(e.logprob - float(ref[tok])) < 1e-4
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].token_id == tok  # greedy: the top one
        assert e.top_logprobs[0].logprob == e.logprob >= e.top_logprobs[1].logprob
        assert e.top_logprobs[1].token_id == int(ref.topk(2).indices[1])
        ids.append(tok)
    # each token's bytes are what it adds to the text (sentencepiece drops the first leading space)
    raw = bytes(b for e in entries for b in e.bytes or [])
    assert raw.decode("utf-8", errors="replace").removeprefix(" ") == res.text


def test_logprobs_are_before_temperature_and_penalties(make_engine: Any, engine_model: Any) -> None:
    """Documented: the raw distribution, whatever temperature, penalties or bias do to the draw."""
    prompt = [9, 9, 40]
    params = SamplingParams(
        max_new_tokens=6,
        temperature=1.7,
        seed=5,
        frequency_penalty=1.0,
        logit_bias={7: 3.0},
        logprobs=True,
        ignore_eos=True,
    )
    res = make_engine().generate([EngineRequest("t", prompt, params)])[0]
    ids = list(prompt)
    assert res.choices[0].logprobs is not None
    for e in res.choices[0].logprobs:
        assert e.top_logprobs == []
        assert (
            abs(e.logprob - float(torch.log_softmax(full_logits(engine_model, ids), -1)[e.token_id])) < 1e-4
        )
        ids.append(e.token_id)


def test_count_penalties_on_small_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    counts = torch.tensor([[0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 1.0]])
    got = apply_count_penalties(logits, counts, torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.25], [2.0]]))
    # logit - frequency * count - presence * (count > 0)
    assert got.tolist() == [[1.0, 1.0, 2.25, 4.0], [1.0 - 6.0 + 1.0, 2.0, 3.0, 4.0 - 2.0 + 1.0]]


def penalised_recompute(model: Any, prompt: list[int], steps: int, p: SamplingParams) -> list[int]:
    """From scratch each token: raw logits, bias, then the penalties over the tokens generated so far."""
    ids, out = list(prompt), []
    vocab = model.config.vocab_size
    for t in range(steps):
        x = full_logits(model, ids)
        for tok, b in p.logit_bias.items():
            x[tok] += b
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=vocab).float()
        x = apply_count_penalties(
            x[None], counts[None], torch.tensor([[p.presence_penalty]]), torch.tensor([[p.frequency_penalty]])
        )[0]
        tok = int(x.argmax())
        if p.temperature > 0:
            assert p.seed is not None
            probs = torch.softmax(x / p.temperature, -1)[None]
            tok = int(draw(probs, uniforms_for(p.seed, 0, t, vocab)[None])[0])
        ids.append(tok)
        out.append(tok)
    return out


def test_penalties_and_bias_equal_the_recompute_in_a_moving_batch(
    make_engine: Any, engine_model: Any
) -> None:
    """Requests of different lengths leave and arrive, so the count pool's rows move with their slots."""
    vocab = engine_model.config.vocab_size
    ps = prompts(6, vocab, seed=4, max_len=12)
    kinds = [
        dict(frequency_penalty=2.0),
        dict(presence_penalty=1.5, frequency_penalty=-0.5),
        dict(presence_penalty=2.0, temperature=1.0, seed=9),
        dict(logit_bias={5: 4.0, 6: -100.0}, frequency_penalty=1.0),
        dict(),
        dict(presence_penalty=-2.0),
    ]
    reqs = [
        EngineRequest(f"p{i}", p, SamplingParams(max_new_tokens=6 + 3 * i, ignore_eos=True, **k))  # type: ignore[arg-type]
        for i, (p, k) in enumerate(zip(ps, kinds, strict=True))
    ]
    got = make_engine(slots=3).generate(reqs)
    for req, res in zip(reqs, got, strict=True):
        want = penalised_recompute(engine_model, req.prompt_ids, req.max_new_tokens, req.params)
        assert res.token_ids == want, req.request_id
    plain = make_engine(slots=6).generate(
        [greedy(r.prompt_ids, r.max_new_tokens, r.request_id) for r in reqs]
    )
    changed = [r.request_id for r, a, b in zip(reqs, got, plain, strict=True) if a.token_ids != b.token_ids]
    assert {"p2", "p3", "p5"} <= set(changed) and "p4" not in changed  # the knobs did act


def test_logit_bias_plus_100_forces_a_token_and_minus_100_bans_one(make_engine: Any) -> None:
    prompt = [20, 21, 22]
    forced = make_engine().generate([greedy(prompt, 5, logit_bias={42: 100.0})])[0]
    assert forced.token_ids == [42] * 5
    plain = make_engine().generate([greedy(prompt, 5)])[0].token_ids
    banned = make_engine().generate([greedy(prompt, 5, logit_bias={t: -100.0 for t in set(plain)})])[0]
    assert not set(banned.token_ids) & set(plain)
