"""Batch-1 matrix-vector product ``y = x·Wᵀ`` in Triton, an alternative to cuBLAS for one decode row.

At batch 1 a decode step is a stream over the weights; this kernel reads each weight row once with
wide, coalesced loads and keeps a 2-D fp32 accumulator so the reduction happens once per program.
Whether it beats cuBLAS is measured by ``bench/gpu.py``; ``FastTransnormer`` uses it only when told.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    N,
    K,
    stride_w,
    BN: tl.constexpr,
    BK: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    m_n = offs_n < N
    offs_k = tl.arange(0, BK)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        if EVEN_K:
            x = tl.load(x_ptr + kk).to(tl.float32)
            w = tl.load(w_rows + kk[None, :], mask=m_n[:, None], other=0.0)
        else:
            m_k = kk < K
            x = tl.load(x_ptr + kk, mask=m_k, other=0.0).to(tl.float32)
            w = tl.load(w_rows + kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=m_n)


DEFAULT_CONFIG = (8, 512, 4, 4)  # (BN, BK, num_warps, num_stages); chosen by bench/gpu.py --micro


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor | None = None,
    config: tuple[int, int, int, int] = DEFAULT_CONFIG,
) -> torch.Tensor:
    """``x [1, K] · w [N, K]ᵀ -> [1, N]`` (x contiguous, w row-major)."""
    n, k = w.shape
    assert x.shape == (1, k) and x.is_contiguous() and w.stride(1) == 1
    if out is None:
        out = torch.empty((1, n), device=x.device, dtype=x.dtype)
    bn, bk, warps, stages = config
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, w, out, n, k, w.stride(0), BN=bn, BK=bk, EVEN_K=(k % bk == 0), num_warps=warps, num_stages=stages
    )
    return out
