"""Decode-batch GEMM ``y = x·Wᵀ`` with split-K, for the row counts where one output tile per weight
tile leaves SMs idle.

A decode step at 64 or 256 rows multiplies a short ``x [M, K]`` by each weight matrix. With 4096
output columns (the attention output and the GLU down projection) a grid of one program per output
tile is smaller than the GPU (64 programs of 64 columns on 132 SMs): most SMs idle while the few
busy ones stream the weights. Splitting K over ``S`` programs per tile fills the GPU; each writes its
fp32 partial sum to a workspace and a second kernel adds the ``S`` partials in a fixed order
(deterministic, unlike atomics) and rounds once. ``S = 1`` writes the output directly.

``FastTransnormer.splitk`` maps weight shapes to configurations for decode batches of up to 128
rows (bench/decode_gemm.py measures them inside the captured decode step).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class GemmConfig(NamedTuple):
    """Tile sizes, split count and launch shape of one ``splitk_linear``."""

    bm: int
    bn: int
    bk: int
    splits: int
    warps: int
    stages: int


@triton.jit
def _splitk_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    p_ptr,
    M,
    N,
    K,
    stride_x,
    stride_w,
    stride_y,
    S,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    SPLIT: tl.constexpr,
):
    pid_m = tl.program_id(0)  # fastest: the M tiles of one weight tile run together (L2 reuse)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    nk = K // BK
    k_lo = pid_s * nk // S
    k_hi = (pid_s + 1) * nk // S
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = k_lo * BK + tl.arange(0, BK)
    m_m = offs_m < M
    x_ptrs = x_ptr + offs_m[:, None] * stride_x + offs_k[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_w + offs_k[:, None]  # [BK, BN] tile of Wᵀ
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(k_lo, k_hi):
        a = tl.load(x_ptrs, mask=m_m[:, None], other=0.0)
        b = tl.load(w_ptrs)
        acc = tl.dot(a, b, acc)
        x_ptrs += BK
        w_ptrs += BK
    if SPLIT:
        out = p_ptr + pid_s * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(out, acc, mask=m_m[:, None])
    else:
        out = y_ptr + offs_m[:, None] * stride_y + offs_n[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_m[:, None])


@triton.jit
def _reduce_kernel(p_ptr, y_ptr, MN, N, stride_y, S: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(S):  # fixed order: the same sum every run
        acc += tl.load(p_ptr + s * MN + offs, mask=m, other=0.0)
    rows = offs // N
    tl.store(y_ptr + rows * stride_y + (offs - rows * N), acc.to(y_ptr.dtype.element_ty), mask=m)


def splitk_ok(w: torch.Tensor, cfg: GemmConfig) -> bool:
    """Whether ``cfg`` tiles ``w [N, K]`` exactly (N and K multiples of its tiles; bf16/fp16)."""
    n, k = w.shape
    half = w.dtype in (torch.bfloat16, torch.float16)
    return half and w.stride(1) == 1 and n % cfg.bn == 0 and k % cfg.bk == 0 and k // cfg.bk >= cfg.splits


def splitk_linear(x: torch.Tensor, w: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """``x [M, K] · w [N, K]ᵀ -> [M, N]`` in x's dtype (x may be a row-strided view). ``cfg.bm = 0``:
    one row tile of the next power of two >= M (at least 16), the skinny kernel's choice."""
    m, k = x.shape
    n = w.shape[0]
    assert x.stride(1) == 1 and k == w.shape[1] and splitk_ok(w, cfg), (tuple(w.shape), cfg)
    if cfg.bm == 0:
        cfg = cfg._replace(bm=max(16, triton.next_power_of_2(m)))
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    split = cfg.splits > 1
    part = torch.empty((cfg.splits, m, n), device=x.device, dtype=torch.float32) if split else y
    grid = (triton.cdiv(m, cfg.bm), n // cfg.bn, cfg.splits)
    _splitk_kernel[grid](
        x, w, y, part, m, n, k, x.stride(0), w.stride(0), y.stride(0), cfg.splits,
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, SPLIT=split, num_warps=cfg.warps, num_stages=cfg.stages,
    )  # fmt: skip
    if split:
        block = 1024
        _reduce_kernel[(triton.cdiv(m * n, block),)](
            part, y, m * n, n, y.stride(0), S=cfg.splits, BLOCK=block, num_warps=4
        )
    return y
