"""Golden parity with the official implementation on the tiny-a fixture (docs/MODEL_SPEC.md §9).

Same comparison as ../shared/reference/check_parity.py, on a copy of the fixture committed under
golden/, plus the greedy continuation through our own prefill + decode loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tnllm.model import load_pretrained

TOL = 1e-4


@pytest.fixture(scope="module")
def expected(tiny_a_path: Path) -> dict:
    return json.loads((tiny_a_path / "expected.json").read_text())


@pytest.fixture(scope="module")
def model(tiny_a_path: Path):  # type: ignore[no-untyped-def]
    return load_pretrained(tiny_a_path, device="cpu", dtype=torch.float32)


def _sequences(expected: dict) -> list[dict]:
    return expected["sequences"]


def test_fixture_covers_block_boundary(expected: dict) -> None:
    lengths = [s["length"] for s in _sequences(expected)]
    assert 1 in lengths and max(lengths) > 256


@pytest.mark.parametrize("index", range(5))
def test_full_forward_matches_official(model, expected: dict, index: int) -> None:  # type: ignore[no-untyped-def]
    seq = _sequences(expected)[index]
    n = seq["length"]
    logits = model(torch.tensor([seq["input_ids"]]))[0].double()
    assert logits.shape == (n, expected["config"]["vocab_size"])
    wanted = {n - 1: seq["logits_last"], **{int(k): v for k, v in seq["logits_at"].items()}}
    for pos, ref in wanted.items():
        diff = (logits[pos] - torch.tensor(ref, dtype=torch.float64)).abs().max().item()
        assert diff <= TOL, f"position {pos}: max |diff| {diff}"
    skip = set(seq["argmax_ambiguous_positions"])
    got = logits.argmax(-1).tolist()
    bad = [
        i
        for i, (g, r) in enumerate(zip(got, seq["argmax_all_positions"], strict=True))
        if g != r and i not in skip
    ]
    assert not bad
    cs = seq["checksum"]
    assert math.isclose((logits * logits).sum().item(), cs["sum_sq"], rel_tol=1e-5)
    assert math.isclose(logits.abs().sum().item(), cs["sum_abs"], rel_tol=1e-5)
    assert abs(logits.sum().item() - cs["sum"]) <= 1e-5 * cs["sum_abs"]


@pytest.mark.parametrize("index", range(5))
def test_prefill_state_and_greedy_match_official(model, expected: dict, index: int) -> None:  # type: ignore[no-untyped-def]
    seq = _sequences(expected)[index]
    pool = model.new_state_pool(3)
    for layer in pool:
        layer.fill_(float("nan"))  # slot 1 must be reset, slots 0 and 2 must stay untouched
    model.reset_slot(pool, 1)
    logits = model.prefill(torch.tensor(seq["input_ids"]), 0, pool, 1)
    for layer, ref in zip(pool, seq["state_after_prompt"], strict=True):
        state = layer[1].double()
        assert [1, *state.shape] == ref["shape"]
        assert math.isclose(state.sum().item(), ref["sum"], rel_tol=1e-5, abs_tol=1e-3)
        assert math.isclose((state * state).sum().item(), ref["sum_sq"], rel_tol=1e-5)
    tokens, pos = [], seq["length"]
    for _ in range(len(seq["greedy"]["new_tokens"])):
        tokens.append(int(logits.argmax()))
        logits = model.decode(torch.tensor([tokens[-1]]), torch.tensor([pos]), pool, torch.tensor([1]))[0]
        pos += 1
    assert tokens == seq["greedy"]["new_tokens"]
    assert torch.isnan(pool[0][0]).all() and torch.isnan(pool[0][2]).all()


def test_chunked_prefill_equals_whole_prompt(model, expected: dict) -> None:  # type: ignore[no-untyped-def]
    """20 + 10 + 7 tokens as three calls: the official module offset gets the third chunk wrong (§10 Q1)."""
    ids = torch.tensor(_sequences(expected)[2]["input_ids"])  # 37 tokens
    whole = model(ids[None])[0]
    pool = model.new_state_pool(1)
    parts = [model.prefill(ids[a:b], a, pool, 0, last_only=False) for a, b in ((0, 20), (20, 30), (30, 37))]
    assert torch.allclose(torch.cat(parts), whole, atol=TOL, rtol=0)
