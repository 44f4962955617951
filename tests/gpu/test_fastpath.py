"""FastTransnormer and the CUDA-graph decode runner against a float64 quadratic reference (CUDA only)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DEV = "cuda"


def reference_logits(fast, ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """All-position logits [T, V] of a fresh sequence, float64, quadratic form (docs/MODEL_SPEC.md §4)."""
    sp = fast.spec
    h, d, e, f = sp.n_heads, sp.head_dim, sp.d_attn, sp.d_ffn
    t = len(ids)

    def srms(z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt((z * z).mean(-1, keepdim=True) + sp.eps)

    emb = fast.embed.double()
    x = emb[torch.tensor(ids, device=DEV)] * sp.embed_scale
    pos = torch.arange(t, device=DEV)
    for lw in fast.layers:
        z = srms(x) @ lw.qkvu_w.double().T
        q = torch.nn.functional.silu(z[:, :e]).view(t, h, d)
        k = torch.nn.functional.silu(z[:, e : 2 * e]).view(t, h, d)
        v = z[:, 2 * e : 3 * e].view(t, h, d)
        if lw.theta is not None:
            ang = (lw.theta[None] * pos.float()[:, None, None]).double()
            q = torch.cat([q * ang.cos(), q * ang.sin()], -1)
            k = torch.cat([k * ang.cos(), k * ang.sin()], -1)
        lam = (-lw.g_gamma).double()
        diff = (pos[:, None] - pos[None, :]).double()
        w = torch.exp(-lam[:, None, None] * diff.clamp(min=0)) * (diff >= 0)
        o = torch.einsum("thk,shk,hts,shv->thv", q, k, w, v).reshape(t, e)
        x = x + (srms(o) * z[:, 3 * e :]) @ lw.out_w.double().T
        hh = srms(x) @ lw.l12_w.double().T
        x = x + (hh[:, :f] * hh[:, f:]) @ lw.l3_w.double().T
    return srms(x) @ emb.T


def tiny(dtype: torch.dtype, seed: int = 0):  # type: ignore[no-untyped-def]
    from tnllm.model.kernels.fastpath import FastTransnormer

    return FastTransnormer.random(
        d_model=64, n_layers=3, n_heads=4, d_ffn=96, vocab=99, device=DEV, dtype=dtype, std=0.2, seed=seed
    )


def test_prefill_chunks_and_decode_match_reference() -> None:
    fast = tiny(torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(0, 99, (90,)).tolist()
    ref = reference_logits(fast, ids)
    pool = fast.new_state_pool(4)
    slot = 2
    full = fast.prefill(torch.tensor(ids[:70], device=DEV), 0, pool, slot, last_only=False)
    assert (full - ref[:70]).abs().max() < 2e-3
    pool2 = fast.new_state_pool(4)
    fast.prefill(torch.tensor(ids[:33], device=DEV), 0, pool2, 1)
    last = fast.prefill(torch.tensor(ids[33:70], device=DEV), 33, pool2, 1)
    assert (last - ref[69]).abs().max() < 2e-3
    for p in range(70, 90):
        lg = fast.decode(
            torch.tensor([ids[p]], device=DEV),
            torch.tensor([p], device=DEV),
            pool2,
            torch.tensor([1], device=DEV),
        )
        assert (lg[0] - ref[p]).abs().max() < 2e-3


def test_graph_runner_batches_independent_rows_bf16() -> None:
    """Graph replay == the same batch run eagerly; each row ≈ that row decoded alone (bf16 tolerance:
    the solo row takes the batch-1 GEMV path with fp32 activations, the batch takes cuBLAS)."""
    from tnllm.model.kernels.graphs import DecodeGraphRunner

    fast = tiny(torch.bfloat16, seed=1)
    torch.manual_seed(1)
    prompts = [torch.randint(0, 99, (n,)).tolist() for n in (5, 40, 1, 77)]
    slots = [3, 0, 6, 1]
    pool = fast.new_state_pool(8)
    runner = DecodeGraphRunner(fast, pool, max_batch=8)
    runner.capture()
    nxt, pos = [], []
    for p, s in zip(prompts, slots, strict=True):
        nxt.append(int(fast.prefill(torch.tensor(p, device=DEV), 0, pool, s).argmax()))
        pos.append(len(p))
    eager_pool = [p.clone() for p in pool]
    solo_pool = [p.clone() for p in pool]
    for _ in range(6):
        logits = runner.decode(torch.tensor(nxt), torch.tensor(pos), torch.tensor(slots)).clone()
        eager = fast.decode(
            torch.tensor(nxt, device=DEV),
            torch.tensor(pos, device=DEV),
            eager_pool,
            torch.tensor(slots, device=DEV),
        )
        assert (logits - eager).abs().max() < 1e-3
        scale = float(eager.abs().max())
        for r, s in enumerate(slots):
            one = fast.decode(
                torch.tensor([nxt[r]], device=DEV),
                torch.tensor([pos[r]], device=DEV),
                solo_pool,
                torch.tensor([s], device=DEV),
            )
            assert (logits[r] - one[0]).abs().max() < 0.05 * scale
        nxt = logits.argmax(-1).tolist()
        pos = [p + 1 for p in pos]
    for a, b, c in zip(pool, eager_pool, solo_pool, strict=True):
        assert (a - b).abs().max() < 1e-5  # the graph wrote exactly the states the eager batch wrote
        assert (a - c).abs().max() < 0.05 * float(c.abs().max())
    untouched = [2, 4, 5, 7]
    assert all(bool((p[untouched] == 0).all()) for p in pool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_prefill_matches_the_reference_and_one_at_a_time(dtype: torch.dtype) -> None:
    """Several chunks in one packed forward (fla varlen in bf16, the exact loop in fp32): fresh and
    continued sequences, one a single token, each in its own slot."""
    fast = tiny(dtype, seed=3)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 99, (n,)).tolist() for n in (70, 1, 45, 130)]
    refs = [reference_logits(fast, p) for p in prompts]
    tol = 2e-3 if dtype == torch.float32 else 0.05 * max(float(r.abs().max()) for r in refs)
    pool = fast.new_state_pool(6)
    alone = fast.new_state_pool(6)
    slots = [4, 0, 2, 5]
    split = [30, 1, 45, 100]  # first chunk lengths; the rest of each prompt (if any) comes next step
    first = fast.prefill_many([(p[:n], 0, s) for p, n, s in zip(prompts, split, slots, strict=True)], pool)
    for r, (p, n, s) in enumerate(zip(prompts, split, slots, strict=True)):
        assert (first[r] - refs[r][n - 1]).abs().max() < tol
        fast.prefill(torch.tensor(p[:n], device=DEV), 0, alone, s)
    rest = [(p[n:], n, s) for p, n, s in zip(prompts, split, slots, strict=True) if len(p) > n]
    second = fast.prefill_many(rest, pool)
    for r, (ids, start, s) in enumerate(rest):
        ref = refs[slots.index(s)]
        assert (second[r] - ref[start + len(ids) - 1]).abs().max() < tol
        fast.prefill(torch.tensor(ids, device=DEV), start, alone, s)
    for a, b in zip(pool, alone, strict=True):
        assert (a - b).abs().max() <= (1e-5 if dtype == torch.float32 else 0.02) * float(b.abs().max())
    assert all(bool((p[[1, 3]] == 0).all()) for p in pool)  # other slots untouched


def test_host_chunk_index_is_flas() -> None:
    """The host-built index of the no-sync packed prefill equals fla's own (device-built) one."""
    from fla.ops.utils.index import prepare_chunk_indices, prepare_chunk_offsets

    from tnllm.model.kernels.attention import chunk_index_host

    for lengths in ([1], [64], [65, 1, 128, 3], [37, 100, 64, 200, 2]):
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEV)
        offsets, pairs = chunk_index_host(lengths)
        assert offsets == prepare_chunk_offsets(cu, 64).tolist()
        assert torch.equal(torch.tensor(pairs, device=DEV).view(-1, 2), prepare_chunk_indices(cu, 64))


@pytest.mark.parametrize("shape", [(4, 16, 16), (4, 32, 16), (32, 128, 128), (32, 256, 128)])
def test_nosync_packed_path_matches_flas_public_call(shape: tuple[int, int, int]) -> None:
    """Bit for bit on the tiny test model's head shapes and the 7B's (plain and LRPE layers): the
    engine uses the no-sync path only where this holds, so a failure here means it silently fell
    back to the slower public call."""
    from tnllm.model.kernels.attention import packed_path_matches

    assert packed_path_matches(*shape, torch.device(DEV), torch.bfloat16)


@contextlib.contextmanager
def sync_debug_error() -> Iterator[None]:
    """CUDA's sync-debug mode set to "error" for the block, the previous mode restored in a ``finally``.

    Setting it warns (a UserWarning: the mode is a prototype); under ``filterwarnings=error`` that
    warning would raise after the mode is already set and leave it on for every later test, so it is
    silenced here, and the mode is set inside the ``try``.
    """
    before = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message=".*[Ss]ync.*")
            torch.cuda.set_sync_debug_mode("error")
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message=".*[Ss]ync.*")
            torch.cuda.set_sync_debug_mode(before)


def test_sync_debug_error_restores_the_mode_even_when_the_block_raises() -> None:
    before = torch.cuda.get_sync_debug_mode()
    with pytest.raises(RuntimeError, match="boom"), sync_debug_error():
        assert torch.cuda.get_sync_debug_mode() == 2  # "error"
        raise RuntimeError("boom")
    assert torch.cuda.get_sync_debug_mode() == before


def test_packed_prefill_never_waits_for_the_gpu_and_equals_the_public_path() -> None:
    """A packed prefill step on the no-sync path runs with CUDA's sync check set to error (each layer
    of fla's public call reads a chunk count back from the device) and gives the public path's logits
    and states exactly."""
    nosync, public = tiny(torch.bfloat16, seed=5), tiny(torch.bfloat16, seed=5)
    assert nosync.packed_nosync()
    public._packed_nosync = False
    torch.manual_seed(5)
    chunks = [
        (torch.randint(0, 99, (n,)).tolist(), start, slot)
        for n, start, slot in ((70, 0, 1), (3, 0, 4), (45, 9, 2))
    ]
    pools = [m.new_state_pool(6) for m in (nosync, public)]
    nosync.prefill_many(chunks, pools[0])  # compiles and tunes first: autotuning syncs
    torch.cuda.synchronize()
    for p in pools[0]:
        p.zero_()
    with sync_debug_error():
        got = nosync.prefill_many(chunks, pools[0])
    want = public.prefill_many(chunks, pools[1])
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(*pools, strict=True))


@pytest.mark.parametrize("rows", [1, 64])
def test_pdl_changes_scheduling_not_results(rows: int) -> None:
    """With programmatic dependent launch every kernel still waits for its predecessor's results:
    graph replays with and without it give bit-identical logits and states, step after step."""
    from tnllm.model.kernels import pdl
    from tnllm.model.kernels.fastpath import FastTransnormer
    from tnllm.model.kernels.graphs import DecodeGraphRunner

    if not pdl.supported():
        pytest.skip("no PDL on this GPU / Triton")
    fast = FastTransnormer.random(
        d_model=1024, n_layers=4, n_heads=8, d_ffn=2560, vocab=4096, device=DEV, dtype=torch.bfloat16,
        std=0.03, seed=5,
    )  # fmt: skip
    torch.manual_seed(5)
    ids0 = torch.randint(0, 4096, (rows,)).tolist()
    outs: dict[bool, list[torch.Tensor]] = {}
    pools: dict[bool, list[torch.Tensor]] = {}
    try:
        for on in (False, True):
            pdl.set_enabled(on)
            pool = fast.new_state_pool(rows)
            runner = DecodeGraphRunner(fast, pool, max_batch=rows, buckets=[rows])
            runner.capture()
            ids, steps = ids0, []
            for step in range(5):
                logits = runner.decode(
                    torch.tensor(ids), torch.tensor([step] * rows), torch.arange(rows)
                ).clone()
                steps.append(logits)
                ids = logits.argmax(-1).tolist()
            outs[on], pools[on] = steps, pool
    finally:
        pdl.set_enabled(True)
    for a, b in zip(outs[False], outs[True], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(pools[False], pools[True], strict=True):
        assert torch.equal(a, b)
