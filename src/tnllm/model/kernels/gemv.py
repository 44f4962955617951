"""Batch-1 matrix-vector product ``y = x·Wᵀ`` in Triton, an alternative to cuBLAS for one decode row.

At batch 1 a decode step is a stream over the weights; this kernel reads each weight row once with
wide, coalesced loads and keeps a 2-D fp32 accumulator so the reduction happens once per program.
Whether it beats cuBLAS is measured by ``bench/gpu.py``; ``FastTransnormer`` uses it only when told.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tnllm.model.kernels.pdl import dependent_launch_prologue, launch_args


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


# ---- batch-1 GEMV with the neighbouring row ops fused in ------------------------------------------
# PRO (prologue, how the input row is formed on the fly):
#   1: SRMS(x) of the fp32 residual row x   2: SRMS(x) ⊙ x2 (norm + gate)   3: x ⊙ x2 (GLU product)
# ADD (epilogue): res[n] += y (the fp32 residual stream, in place) instead of storing y.
# Each layer of a batch-1 decode step is then 4 GEMVs + the attention kernel (5 launches, not 9).
@triton.autotune(
    configs=[
        triton.Config({"BN": bn, "BK": bk}, num_warps=w)
        for bn, bk, w in [(4, 1024, 4), (2, 2048, 4), (8, 512, 4), (8, 1024, 8), (4, 512, 2), (16, 256, 4)]
    ],
    key=["N", "K", "PRO", "ADD"],
    restore_value=["res_ptr"],
)
@triton.jit
def _gemv_fused_kernel(
    x_ptr,
    x2_ptr,
    w_ptr,
    res_ptr,
    y_ptr,
    N,
    stride_w,
    eps,
    K: tl.constexpr,
    PRO: tl.constexpr,
    ADD: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    m_n = offs_n < N
    offs_k = tl.arange(0, BK)
    r = 1.0
    if PRO == 1 or PRO == 2:
        ss = tl.zeros([BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + offs_k
            xv = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            ss += xv * xv
        r = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        m_k = kk < K
        xv = tl.load(x_ptr + kk, mask=m_k, other=0.0).to(tl.float32)
        if PRO == 1:
            xv = xv * r
        if PRO == 2:
            xv = xv * r * tl.load(x2_ptr + kk, mask=m_k, other=0.0).to(tl.float32)
        if PRO == 3:
            xv = xv * tl.load(x2_ptr + kk, mask=m_k, other=0.0).to(tl.float32)
        w = tl.load(w_rows + kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        acc += w.to(tl.float32) * xv[None, :]
    y = tl.sum(acc, axis=1)
    if ADD:
        y += tl.load(res_ptr + offs_n, mask=m_n, other=0.0)
        tl.store(res_ptr + offs_n, y, mask=m_n)
    else:
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=m_n)


def gemv_fused(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    pro: int,
    x2: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-6,
) -> torch.Tensor | None:
    """One row through ``w [N, K]`` with a fused prologue (see ``PRO`` above) and optional residual add.

    x, x2: ``[1, K]`` rows (feature stride 1); residual: fp32 ``[1, N]`` updated in place (then None is
    returned), else a new ``[1, N]`` row in ``out_dtype``.
    """
    n, k = w.shape
    assert x.shape[-1] == k and x.stride(-1) == 1 and w.stride(1) == 1
    out = None if residual is not None else torch.empty((1, n), device=x.device, dtype=out_dtype)
    _gemv_fused_kernel[lambda meta: (triton.cdiv(n, meta["BN"]),)](
        x,
        x2 if x2 is not None else x,
        w,
        residual if residual is not None else x,
        out if out is not None else x,
        n,
        w.stride(0),
        eps,
        K=k,
        PRO=pro,
        ADD=residual is not None,
        **launch_args(),
    )
    return out


# ---- skinny GEMM (16 < M <= 128 decode rows) -----------------------------------------------------
# At these row counts cuBLAS streams the weights well below the copy ceiling (docs/PERFORMANCE.md);
# this tensor-core kernel keeps every row of the batch in one M tile so each weight tile is read once.
@triton.autotune(
    configs=[
        triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (64, 128, 4, 4),
            (128, 64, 4, 4),
            (128, 128, 8, 3),
            (64, 256, 4, 3),
            (32, 256, 4, 4),
        ]
    ],
    key=["BM", "N", "K"],
)
@triton.jit
def _skinny_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    M,
    N,
    stride_x,
    stride_w,
    stride_y,
    K: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_m = offs_m < M
    x_ptrs = x_ptr + offs_m[:, None] * stride_x + offs_k[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_w + offs_k[:, None]  # [BK, BN] tile of Wᵀ
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(0, K, BK):
        a = tl.load(x_ptrs, mask=m_m[:, None], other=0.0)
        b = tl.load(w_ptrs)
        acc = tl.dot(a, b, acc)
        x_ptrs += BK
        w_ptrs += BK
    out = y_ptr + offs_m[:, None] * stride_y + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_m[:, None])


def skinny_ok(m: int, w: torch.Tensor) -> bool:
    """Shapes the skinny kernel takes: 16 < M <= 128, N and K multiples of 256 (every 7B matrix)."""
    n, k = w.shape
    half = w.dtype in (torch.bfloat16, torch.float16)  # fp32 dots would run as TF32
    return half and 16 < m <= 128 and n % 256 == 0 and k % 256 == 0 and w.stride(1) == 1


def skinny_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x [M, K] · w [N, K]ᵀ`` for a decode batch of 17..128 rows (x may be a row-strided view)."""
    m, k = x.shape
    n = w.shape[0]
    assert x.stride(1) == 1
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    bm = max(16, triton.next_power_of_2(m))
    _skinny_kernel[lambda meta: (triton.cdiv(n, meta["BN"]),)](
        x, w, y, m, n, x.stride(0), w.stride(0), y.stride(0), K=k, BM=bm, **launch_args()
    )
    return y
