"""Each sampling parameter changes the outcome the way it should (tiny model, many seeded draws)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.engine.conftest import greedy
from tnllm.engine import EngineRequest, SamplingParams
from tnllm.engine.sampling import (
    BatchSampler,
    RowSampling,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    sample,
)

PROMPT = [17, 4, 99, 23, 8]
DRAWS = 240


def first_tokens(make_engine: Any, **params: Any) -> list[int]:
    """The first sampled token of DRAWS requests with seeds 0..DRAWS-1 (all batched together)."""
    reqs = [
        EngineRequest(f"s{i}", PROMPT, SamplingParams(max_new_tokens=1, seed=i, ignore_eos=True, **params))
        for i in range(DRAWS)
    ]
    return [r.token_ids[0] for r in make_engine(slots=64, budget=4096).generate(reqs)]


@pytest.fixture(scope="module")
def next_logits(engine_model: Any) -> torch.Tensor:
    with torch.inference_mode():
        return engine_model(torch.tensor([PROMPT]))[0, -1].double()


def test_temperature_moves_samples_between_greedy_and_flat(
    make_engine: Any, next_logits: torch.Tensor
) -> None:
    assert set(first_tokens(make_engine, temperature=1e-4)) == {int(next_logits.argmax())}
    means = {}
    for t in (0.5, 2.0):
        got = next_logits[first_tokens(make_engine, temperature=t)]
        p = torch.softmax(next_logits / t, -1)
        want = float((p * next_logits).sum())
        sd = math.sqrt(float((p * (next_logits - want) ** 2).sum()) / DRAWS)
        means[t] = float(got.mean())
        assert abs(means[t] - want) < 4.5 * sd + 1e-9, (t, means[t], want, sd)
    assert means[0.5] > means[2.0]  # colder picks higher-logit tokens


def test_top_k_limits_draws_to_the_k_best(make_engine: Any, next_logits: torch.Tensor) -> None:
    top5 = set(torch.topk(next_logits, 5).indices.tolist())
    limited = first_tokens(make_engine, temperature=5.0, top_k=5)
    assert set(limited) <= top5 and len(set(limited)) >= 3
    free = first_tokens(make_engine, temperature=5.0, top_k=0)
    assert not set(free) <= top5


def test_top_p_limits_draws_to_the_nucleus(make_engine: Any, next_logits: torch.Tensor) -> None:
    probs = torch.softmax(next_logits / 1.5, -1)
    order = torch.argsort(probs, descending=True)
    mass3 = float(probs[order[:3]].sum())
    nucleus = set(order[:3].tolist())
    limited = first_tokens(make_engine, temperature=1.5, top_p=mass3 - 1e-6)
    assert set(limited) <= nucleus and len(set(limited)) >= 2
    free = first_tokens(make_engine, temperature=1.5, top_p=1.0)
    assert not set(free) <= nucleus


def test_repetition_penalty_avoids_seen_tokens(make_engine: Any) -> None:
    prompt = [40, 41, 42]
    plain = make_engine().generate([greedy(prompt, 40)])[0].token_ids
    seen: set[int] = set(prompt)
    repeats = 0
    for t in plain:
        repeats += t in seen
        seen.add(t)
    assert repeats > 0  # the random model loops when greedy ...
    penalised = make_engine().generate([greedy(prompt, 40, repetition_penalty=10.0)])[0].token_ids
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(
        prompt
    )  # ... not with a penalty


def test_filters_on_known_rows() -> None:
    rows = torch.tensor([[1.0, 3.0, 2.0, -1.0], [1.0, 3.0, 2.0, -1.0]])
    masked = torch.isinf(apply_top_k(rows, torch.tensor([2, 0]))).tolist()
    assert masked == [[True, False, False, True], [False] * 4]  # each row its own k; 0 keeps all
    # softmax([3,2,1,-1]) ≈ .66 .24 .09 .01 -> p=.8 keeps the two best (mass before #2 is .66 < .8)
    masked = torch.isinf(apply_top_p(rows, torch.tensor([0.8, 0.5]))).tolist()
    assert masked == [[True, False, False, True], [True, False, True, True]]
    assert not torch.isinf(apply_top_p(rows, torch.tensor([1.0, 1.0]))).any()
    pen = apply_repetition_penalty(rows[0], [1, 3, 3], 2.0)
    assert pen.tolist() == [1.0, 1.5, 2.0, -2.0]


def test_a_row_samples_with_its_requests_params_object() -> None:
    """RowSampling refers to the request's SamplingParams (no field copies that could drift)."""
    params = SamplingParams(max_new_tokens=3, temperature=0.7, top_k=2, top_p=0.5, repetition_penalty=1.1)
    row = RowSampling(params, seen_ids=[1])
    assert row.params is params and (row.temperature, row.penalty) == (0.7, 1.1)


def test_a_seeded_row_draws_the_same_whatever_shares_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)

    def row(seed: int, **kw: Any) -> RowSampling:
        return RowSampling(SamplingParams(**kw), seed=seed)

    alone = [sample(logits[2:3], [row(7, temperature=0.9, top_p=0.8)]) for _ in range(3)]
    others = [row(1, temperature=2.0), RowSampling(), row(3, temperature=1.0, top_k=3)]
    others += [
        RowSampling(SamplingParams(repetition_penalty=1.5), seen_ids=[1, 2]),
        row(5, temperature=0.5, top_k=1),
    ]
    crowd = sample(logits, [*others[:2], row(7, temperature=0.9, top_p=0.8), *others[2:]])
    assert alone[0] == alone[1] == alone[2] == [crowd[2]]
    assert crowd[1] == int(logits[1].argmax()) and crowd[5] == int(logits[5].argmax())


def test_the_draw_of_token_t_is_a_pure_function_of_seed_and_t() -> None:
    """Counter-based draws: a request resumed at token t (``RowSampling.step``) draws what it would
    have drawn, and a sampler reused step after step advances its counters the same way."""
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.5)
    through = BatchSampler([RowSampling(params, seed=11)], logits.device)
    run = [int(through(logits)[0][0]) for _ in range(8)]
    resumed = [sample(logits, [RowSampling(params, seed=11, step=t)])[0] for t in range(8)]
    assert run == resumed and len(set(run)) > 1  # the draws differ token to token
    other = [sample(logits, [RowSampling(params, seed=12, step=t)])[0] for t in range(8)]
    assert other != run  # another seed, other draws
