"""Attention ops: block-wise prefill vs recurrent steps vs direct quadratic evaluation, outputs and states."""

from __future__ import annotations

import pytest
import torch

from tnllm.model import formulas, ops


@pytest.fixture(autouse=True)
def nan_fill_empty():  # type: ignore[no-untyped-def]
    """torch.empty returns NaN-filled memory here, so an element an op forgets to write shows up."""
    old_det, old_fill = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
    )
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    yield
    torch.use_deterministic_algorithms(old_det)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill  # type: ignore[attr-defined]


def _inputs(n: int, h: int, t: int, d: int, lrpe: bool, seed: int = 0):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, h, t, d, generator=gen) for _ in range(3))
    q, k = torch.nn.functional.silu(q), torch.nn.functional.silu(k)
    if lrpe:
        theta = 10000 ** (-2 / (h * d) * torch.arange(h * d)).reshape(h, 1, d)
        positions = torch.arange(t).expand(n, t) + torch.arange(n)[:, None] * 5  # rows at different offsets
        q, k = ops.lrpe(q, theta, positions), ops.lrpe(k, theta, positions)
    return q, k, v


def _recurrent(q, k, v, decay, state):  # type: ignore[no-untyped-def]
    outs = []
    for i in range(q.shape[2]):
        o, state = ops.decode_attention(q[:, :, i], k[:, :, i], v[:, :, i], decay, state)
        outs.append(o)
    return torch.stack(outs, dim=2), state


def _final_state(k, v, decay):  # type: ignore[no-untyped-def]
    """S_T = Σ_s exp(-λ (T-1-s)) k_sᵀ v_s in fp64."""
    t = k.shape[2]
    w = torch.exp(
        -decay.double().reshape(1, -1, 1) * torch.arange(t - 1, -1, -1, dtype=torch.float64)
    )  # [1, H, T]
    return torch.einsum("nht,nhtk,nhtd->nhkd", w.expand(k.shape[0], -1, -1), k.double(), v.double())


@pytest.mark.parametrize("lrpe", [False, True], ids=["plain", "lrpe"])
@pytest.mark.parametrize("heads", [4, 6])
@pytest.mark.parametrize("t", [1, 7, 256, 300])
@pytest.mark.parametrize("layer", [0, 2])  # fastest and slowest decay of a 3-layer model
def test_prefill_recurrent_quadratic_agree(lrpe: bool, heads: int, t: int, layer: int) -> None:
    d = 8
    q, k, v = _inputs(2, heads, t, d, lrpe)
    decay = formulas.layer_decay(heads, layer, 3)
    zero = torch.zeros(2, heads, q.shape[-1], d)
    block_out, block_state = ops.prefill_attention(q, k, v, decay, zero)
    rec_out, rec_state = _recurrent(q, k, v, decay, zero)
    exact = ops.quadratic_attention(q, k, v, decay)
    scale = exact.abs().max().item() + 1
    assert not torch.isnan(block_out).any()
    assert (block_out.double() - exact).abs().max().item() <= 2e-5 * scale
    assert (rec_out.double() - exact).abs().max().item() <= 2e-5 * scale
    s_exact = _final_state(k, v, decay)
    s_scale = s_exact.abs().max().item() + 1
    assert (block_state.double() - s_exact).abs().max().item() <= 2e-5 * s_scale
    assert (rec_state.double() - s_exact).abs().max().item() <= 2e-5 * s_scale
    assert torch.equal(zero, torch.zeros_like(zero))  # the input state is not modified


@pytest.mark.parametrize("lrpe", [False, True], ids=["plain", "lrpe"])
@pytest.mark.parametrize("chunks", [(100, 200), (256, 1), (3, 4, 293)])
def test_chunked_prefill_continues_from_state(lrpe: bool, chunks: tuple[int, ...]) -> None:
    heads, d, t = 6, 8, 300
    q, k, v = _inputs(1, heads, t, d, lrpe, seed=1)
    decay = formulas.layer_decay(heads, 1, 3)
    state = torch.zeros(1, heads, q.shape[-1], d)
    whole, whole_state = ops.prefill_attention(q, k, v, decay, state)
    outs, start = [], 0
    for size in (*chunks, t - sum(chunks)):
        if size == 0:
            continue
        o, state = ops.prefill_attention(
            q[:, :, start : start + size],
            k[:, :, start : start + size],
            v[:, :, start : start + size],
            decay,
            state,
        )
        outs.append(o)
        start += size
    assert torch.allclose(torch.cat(outs, dim=2), whole, rtol=1e-5, atol=1e-4)
    assert torch.allclose(state, whole_state, rtol=1e-5, atol=1e-4)


def test_decode_rows_are_independent() -> None:
    heads, d = 6, 8
    q, k, v = _inputs(5, heads, 1, d, lrpe=True, seed=2)
    gen = torch.Generator().manual_seed(4)
    state = torch.randn(5, heads, 2 * d, d, generator=gen)
    decay = formulas.layer_decay(heads, 0, 2)
    out, new = ops.decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], decay, state)
    for row in range(5):
        o1, s1 = ops.decode_attention(
            q[row : row + 1, :, 0],
            k[row : row + 1, :, 0],
            v[row : row + 1, :, 0],
            decay,
            state[row : row + 1],
        )
        assert torch.allclose(out[row], o1[0], atol=1e-6) and torch.allclose(new[row], s1[0], atol=1e-6)


def test_lrpe_depends_only_on_relative_position() -> None:
    h, d = 4, 8
    theta = 10000 ** (-2 / (h * d) * torch.arange(h * d)).reshape(h, 1, d)
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, h, 1, d, generator=gen), torch.randn(1, h, 1, d, generator=gen)

    def score(pq: int, pk: int) -> torch.Tensor:
        a = ops.lrpe(q, theta, torch.tensor([[pq]]))
        b = ops.lrpe(k, theta, torch.tensor([[pk]]))
        return (a * b).sum(-1)

    assert torch.allclose(score(10, 3), score(1007, 1000), atol=1e-4)
    assert not torch.allclose(score(10, 3), score(10, 4), atol=1e-4)
