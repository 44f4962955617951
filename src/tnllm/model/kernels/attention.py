"""Attention kernels of the CUDA fast path.

- ``decode_attention``: one decode step for a batch, in place on a slot pool. Per (row, head, v-block)
  one Triton program reads its state tile once, decays it, adds k'ᵀv, writes it back and reads the
  output from it (docs/MODEL_SPEC.md §5.2: decay, then add, then read), so the state makes one round trip
  through memory and no per-step copy into or out of the pool is needed. SiLU on q/k and the LRPE
  rotation (fp32 angles) happen in the same program, so q/k/v can be read straight out of the fused
  qkvu projection.
- ``prep_qkv``: SiLU + LRPE + head split for a prefill chunk, writing contiguous q'/k'/v for fla.
- ``prefill_attention``: fla-core's ``chunk_simple_gla`` from the slot's carried state
  (``g_gamma = -λ``, ``scale = 1``), final state written back into the slot.
- ``prefill_attention_packed``: the same for N sequences packed along T. With a ``PackedIndex``
  built on the host (``chunk_index_host``) it launches fla's two forward kernels itself: fla-core
  0.6.0's public call reads the chunk count back from the device in every layer (``.item()``), a
  host sync per layer that idles the GPU while the host prepares the next one (30 per prefill step
  on the 7B). ``packed_path_matches`` checks that path against the public call at start-up; the
  engine falls back to the public call if it differs.

Shapes: ``B`` rows, ``H`` heads, per-head width ``D``; ``DK = 2D`` on LRPE layers, else ``D``.
State pool of one layer: fp32 (or bf16, opt-in) ``[slots, H, DK, D]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tnllm.model.kernels.pdl import dependent_launch_prologue, launch_args

CHUNK = 64  # fla's chunk length (its default); ``chunk_index_host`` builds its index for it


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    state_ptr,
    slots_ptr,
    pos_ptr,
    decay_ptr,
    theta_ptr,
    stride_q,
    stride_k,
    stride_v,
    stride_o,
    H: tl.constexpr,
    D: tl.constexpr,
    DK: tl.constexpr,
    QK_HEAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BV: tl.constexpr,
    SILU: tl.constexpr,
    LRPE: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    pid = tl.program_id(0)
    i_v = tl.program_id(1)
    b = pid // H
    h = pid % H
    slot = tl.load(slots_ptr + b).to(tl.int64)
    live = slot >= 0  # padded rows of a CUDA-graph bucket carry slot -1: the state is untouched
    slot = tl.maximum(slot, 0)

    offs_k = tl.arange(0, BLOCK_K)
    offs_v = i_v * BV + tl.arange(0, BV)
    m_k = offs_k < DK
    m_v = offs_v < D
    if LRPE:  # noqa: SIM108 (constexpr branch inside a Triton kernel)
        j = offs_k % D
    else:
        j = offs_k
    b64 = b.to(tl.int64)
    q = tl.load(q_ptr + b64 * stride_q + h * QK_HEAD + j, mask=m_k, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + b64 * stride_k + h * QK_HEAD + j, mask=m_k, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b64 * stride_v + h * D + offs_v, mask=m_v, other=0.0).to(tl.float32)
    if SILU:
        q = q * tl.sigmoid(q)
        k = k * tl.sigmoid(k)
    if LRPE:
        # fp32 position and angle (the official bf16 angles lose the phase at long positions)
        p = tl.load(pos_ptr + b).to(tl.float32)
        ang = tl.load(theta_ptr + h * D + j, mask=m_k, other=0.0) * p
        rot = tl.where(offs_k < D, tl.cos(ang), tl.sin(ang))
        q = q * rot
        k = k * rot
    decay = tl.load(decay_ptr + h)

    s_ptrs = state_ptr + slot * (H * DK * D) + h * (DK * D) + offs_k[:, None] * D + offs_v[None, :]
    m_s = (m_k[:, None] & m_v[None, :]) & live
    s = tl.load(s_ptrs, mask=m_s, other=0.0).to(tl.float32)
    s = s * decay + k[:, None] * v[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m_s)
    o = tl.sum(s * q[:, None], axis=0)
    tl.store(o_ptr + b64 * stride_o + h * D + offs_v, o.to(o_ptr.dtype.element_ty), mask=m_v)


def _decode_tiling(dk: int, d: int, batch: int) -> tuple[int, int, int]:
    """(BLOCK_K, BV, num_warps). 64-wide v blocks with 8 warps stream the state at fla's rate for
    large batches (bench/gpu_micro.py; figures in docs/PERFORMANCE.md); 32-wide blocks start more
    programs at small batches, where the state sits in L2 anyway."""
    block_k = triton.next_power_of_2(dk)
    bv = min(triton.next_power_of_2(d), 64 if batch >= 16 else 32)
    return block_k, bv, 8 if block_k * bv >= 4096 else 4


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    slots: torch.Tensor,
    decay: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
    silu: bool = True,
    tiling: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One recurrent step for B rows, updating ``state[slots[b]]`` in place.

    q, k, v: ``[B, H*W]`` (row stride free, feature stride 1: slices of the qkvu output work; W = D for
    v and for q/k when the kernel rotates them, else DK) holding the *pre-activation* q/k when ``silu``
    is set; state: ``[slots, H, DK, D]``; slots: int ``[B]``
    (``-1`` = padding row, state untouched, output garbage); decay: fp32 ``exp(-λ)`` ``[H]``;
    theta: fp32 ``[H, D]`` with positions int ``[B]`` on the LRPE layer; tiling: optional
    ``(BV, num_warps)`` override (benchmarks). Returns o ``[B, H*D]``.
    """
    _, h, dk, d = state.shape
    bsz = q.shape[0]
    lrpe = theta is not None
    assert not lrpe or dk == 2 * d, "the LRPE layer's state is [2d, d]"
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1 and state.is_contiguous()
    if out is None:
        out = torch.empty((bsz, h * d), device=q.device, dtype=q.dtype)
    block_k, bv, warps = _decode_tiling(dk, d, bsz)
    if tiling is not None:
        bv, warps = tiling
    grid = (bsz * h, triton.cdiv(d, bv))
    _decode_kernel[grid](
        q,
        k,
        v,
        out,
        state,
        slots,
        positions if lrpe else slots,
        decay,
        theta if lrpe else decay,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        out.stride(0),
        H=h,
        D=d,
        DK=dk,
        QK_HEAD=d if lrpe else dk,  # LRPE rotates raw d-wide features in the kernel
        BLOCK_K=block_k,
        BV=bv,
        SILU=silu,
        LRPE=lrpe,
        num_warps=warps,
        **launch_args(),
    )
    return out


@triton.jit
def _prep_kernel(
    z_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    pos_ptr,
    start_pos,
    stride_z,
    E: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    DK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SILU: tl.constexpr,
    LRPE: tl.constexpr,
    HAS_POS: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    m_k = offs_k < DK
    if LRPE:  # noqa: SIM108 (constexpr branch inside a Triton kernel)
        j = offs_k % D
    else:
        j = offs_k
    row = z_ptr + t * stride_z + h * D
    q = tl.load(row + j, mask=m_k, other=0.0).to(tl.float32)
    k = tl.load(row + E + j, mask=m_k, other=0.0).to(tl.float32)
    if SILU:
        q = q * tl.sigmoid(q)
        k = k * tl.sigmoid(k)
    if LRPE:
        if HAS_POS:  # noqa: SIM108 (constexpr branch) packed sequences: each token has its own position
            p = tl.load(pos_ptr + t).to(tl.float32)
        else:
            p = (start_pos + t).to(tl.float32)
        ang = tl.load(theta_ptr + h * D + j, mask=m_k, other=0.0) * p
        rot = tl.where(offs_k < D, tl.cos(ang), tl.sin(ang))
        q = q * rot
        k = k * rot
    out = (t * H + h) * DK + offs_k
    tl.store(q_ptr + out, q.to(q_ptr.dtype.element_ty), mask=m_k)
    tl.store(k_ptr + out, k.to(k_ptr.dtype.element_ty), mask=m_k)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    vv = tl.load(row + 2 * E + offs_d, mask=m_d, other=0.0)
    tl.store(v_ptr + (t * H + h) * D + offs_d, vv.to(v_ptr.dtype.element_ty), mask=m_d)


def prep_qkv(
    z: torch.Tensor,
    n_heads: int,
    start_pos: int,
    theta: torch.Tensor | None,
    silu: bool = True,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the qkvu projection ``z [T, 4E]`` into contiguous q', k' ``[T, H, DK]`` and v ``[T, H, D]``.

    Applies SiLU to q and k and, when ``theta`` (fp32 ``[H, D]``) is given, the LRPE rotation at
    positions ``start_pos .. start_pos+T-1`` (or at ``positions [T]``, int64 on the device, for
    several sequences packed into one T) with fp32 angles.
    """
    t, four_e = z.shape
    e = four_e // 4
    d = e // n_heads
    dk = 2 * d if theta is not None else d
    q = torch.empty((t, n_heads, dk), device=z.device, dtype=z.dtype)
    k = torch.empty_like(q)
    v = torch.empty((t, n_heads, d), device=z.device, dtype=z.dtype)
    _prep_kernel[(t, n_heads)](
        z,
        q,
        k,
        v,
        theta if theta is not None else z,
        positions if positions is not None else z,
        start_pos,
        z.stride(0),
        E=e,
        H=n_heads,
        D=d,
        DK=dk,
        BLOCK_K=triton.next_power_of_2(dk),
        BLOCK_D=triton.next_power_of_2(d),
        SILU=silu,
        LRPE=theta is not None,
        HAS_POS=positions is not None,
        num_warps=1 if dk <= 128 else 2,
    )
    return q, k, v


def exact_prefill(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether prefill takes the exact reference ops instead of fla's chunk kernels.

    fp32 is the parity mode: fla's chunk kernels would use TF32 dots unless the process set
    TRITON_F32_DEFAULT=ieee before they compiled, so take the exact reference ops (cuBLAS fp32).
    Tiny test models (head width < 16) don't fit fla's tensor-core tiles either."""
    return q.dtype == torch.float32 or min(q.shape[-1], v.shape[-1]) < 16


def _fla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    init: torch.Tensor,
    **varlen: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's ``chunk_simple_gla`` on ``[T, H, *]`` rows from states ``init [N, H, DK, D]`` (taken in
    fp32): (o ``[T, H, D]``, final states ``[N, H, DK, D]``, a new buffer). ``varlen``: fla's
    ``cu_seqlens`` (and ``cu_seqlens_cpu``) when N sequences are packed along T."""
    from fla.ops.simple_gla import chunk_simple_gla

    o, final = chunk_simple_gla(
        q.unsqueeze(0),
        k.unsqueeze(0),
        v.unsqueeze(0),
        g_gamma=g_gamma,
        scale=1.0,
        initial_state=init if init.dtype == torch.float32 else init.float(),
        output_final_state=True,
        **varlen,
    )
    return o[0], final


def chunk_index_host(lengths: list[int], chunk: int = CHUNK) -> tuple[list[int], list[int]]:
    """fla's chunk index of sequences of ``lengths`` packed along T, on the host: each sequence's
    first chunk ``[N+1]`` (fla's ``prepare_chunk_offsets``) and, flattened ``[NT*2]``, (sequence,
    chunk within it) for every chunk (``prepare_chunk_indices``)."""
    offsets = [0]
    pairs: list[int] = []
    for n, length in enumerate(lengths):
        count = -(-length // chunk)
        offsets.append(offsets[-1] + count)
        for i in range(count):
            pairs += (n, i)
    return offsets, pairs


@dataclass(frozen=True)
class PackedIndex:
    """The device copy of a packed prefill's index (int64): fla's ``cu_seqlens [N+1]``, each
    sequence's first chunk ``chunk_offsets [N+1]`` and ``chunk_indices [NT, 2]``."""

    cu_seqlens: torch.Tensor
    chunk_offsets: torch.Tensor
    chunk_indices: torch.Tensor


def _fla_chunk_packed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    init: torch.Tensor,
    index: PackedIndex,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_fla_chunk`` over packed sequences with no device read: fla-core 0.6.0's forward of
    ``chunk_simple_gla`` (``g_gamma`` scaled by 1/ln 2 for its exp2 kernels, then
    ``chunk_fwd_kernel_h`` and ``chunk_fwd_o``) with the chunk index taken from ``index`` instead of
    read back from the device. Tied to that version's kernel arguments: ``packed_path_matches``
    checks it against the public call before the engine uses it."""
    from fla.ops.common.chunk_h import chunk_fwd_kernel_h
    from fla.ops.common.chunk_o import chunk_fwd_o
    from fla.ops.utils.constant import RCP_LN2

    t, h, dk = k.shape
    d = v.shape[-1]
    n = index.cu_seqlens.shape[0] - 1
    n_chunks = index.chunk_indices.shape[0]
    q4, k4, v4 = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    g = g_gamma * RCP_LN2
    states = k.new_empty(1, n_chunks, h, dk, d)  # each chunk's starting state, k's dtype as fla's
    final = k.new_empty(n, h, dk, d, dtype=torch.float32)

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(dk, meta["BK"]) * triton.cdiv(d, meta["BV"]) * n * h,)

    with torch.cuda.device(q.device):
        chunk_fwd_kernel_h[grid](
            k=k4, v=v4, h=states, g=None, g_gamma=g, gk=None, gv=None,
            h0=init if init.dtype == torch.float32 else init.float(), ht=final,
            cu_seqlens=index.cu_seqlens, split_offsets=index.chunk_offsets, T=t, H=h, K=dk, V=d,
            BT=CHUNK, BS=CHUNK, USE_G=False, USE_G_GAMMA=True, USE_GK=False, USE_GV=False,
            STATE_V_FIRST=False,
        )  # fmt: skip
        o = chunk_fwd_o(
            q=q4, k=k4, v=v4, h=states, g=None, g_gamma=g, scale=1.0, cu_seqlens=index.cu_seqlens,
            chunk_size=CHUNK, chunk_indices=index.chunk_indices,
        )  # fmt: skip
    return o[0].to(q.dtype), final


def packed_path_matches(n_heads: int, dk: int, d: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``_fla_chunk_packed`` gives what fla's public ``chunk_simple_gla`` gives (bit for
    bit: the same kernels) on random packed sequences of these head shapes, chunk edges crossed.
    False (never an exception) where the installed fla's internals differ."""
    lengths = [37, 100, 64]
    g = torch.Generator(device=device).manual_seed(0)
    t = sum(lengths)
    q, k = (torch.randn(t, n_heads, dk, device=device, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(t, n_heads, d, device=device, generator=g).to(dtype)
    init = torch.randn(len(lengths), n_heads, dk, d, device=device, generator=g)
    g_gamma = -torch.rand(n_heads, device=device, generator=g) * 0.2
    cu_cpu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    offsets, pairs = chunk_index_host(lengths)
    index = PackedIndex(
        cu_cpu.to(device),
        torch.tensor(offsets, device=device),
        torch.tensor(pairs, device=device).view(-1, 2),
    )
    try:
        o_ref, f_ref = _fla_chunk(q, k, v, g_gamma, init, cu_seqlens=index.cu_seqlens, cu_seqlens_cpu=cu_cpu)
        o, f = _fla_chunk_packed(q, k, v, g_gamma, init, index)
    except Exception:  # another fla version's kernel arguments: use the public call
        return False
    return torch.equal(o, o_ref) and torch.equal(f, f_ref)


def prefill_attention_packed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    pool: torch.Tensor,
    slots: torch.Tensor,
    cu_seqlens: torch.Tensor,
    lengths: list[int],
    slot_ids: list[int],
    cu_seqlens_cpu: torch.Tensor | None = None,
    index: PackedIndex | None = None,
) -> torch.Tensor:
    """``prefill_attention`` for N sequences packed along T, each continuing from and updating its
    slot's state: ``slots``/``cu_seqlens [N+1]`` on the device, the same ``slot_ids``/``lengths`` on
    the host. With ``index`` (same ``cu_seqlens``) no step of it reads from the device."""
    if exact_prefill(q, v):
        outs, start = [], 0
        for slot, length in zip(slot_ids, lengths, strict=True):  # the exact path, one at a time
            sl = slice(start, start + length)
            outs.append(prefill_attention(q[sl], k[sl], v[sl], g_gamma, pool[slot]))
            start += length
        return torch.cat(outs)
    init = pool.index_select(0, slots)
    if index is not None:
        o, final = _fla_chunk_packed(q, k, v, g_gamma, init, index)
    else:  # fla's public call (cu_seqlens_cpu spares one of its device reads, not the per-layer one)
        o, final = _fla_chunk(q, k, v, g_gamma, init, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)
    pool.index_copy_(0, slots, final.to(pool.dtype))
    return o


def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_gamma: torch.Tensor, state_row: torch.Tensor
) -> torch.Tensor:
    """Chunked attention over one sequence's chunk, continuing from and updating ``state_row``.

    q, k: ``[T, H, DK]``; v: ``[T, H, D]`` (activated, rotated, contiguous); g_gamma: fp32 ``-λ`` ``[H]``;
    state_row: the slot's fp32 ``[H, DK, D]`` view into the pool. Returns o ``[T, H, D]`` in q's dtype.
    """
    if exact_prefill(q, v):
        from tnllm.model import ops

        lam = -g_gamma
        out, new = ops.prefill_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            lam,
            state_row[None].float(),
        )
        state_row.copy_(new[0])
        return out[0].transpose(0, 1).to(q.dtype)
    o, final = _fla_chunk(q, k, v, g_gamma, state_row.unsqueeze(0))
    state_row.copy_(final[0])  # fla returns a new buffer; one copy per layer per chunk, not per token
    return o
