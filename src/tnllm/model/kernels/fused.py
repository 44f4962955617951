"""Fused row kernels of the CUDA fast path (Triton).

- ``add_rms``: ``x += y`` on the fp32 residual stream, then ``a = SRMS(x)`` in the activation dtype:
  one read of y and one read/write of x instead of add, cast, square, mean, rsqrt, multiply.
- ``norm_gate``: ``SRMS(o) ⊙ u`` over the full attention width E (docs/MODEL_SPEC.md §4 step 7), reading u
  straight out of the qkvu projection.
- ``glu_product``: the GLU's ``h1 ⊙ h2``, bit for bit torch's, launched like the others (PDL).

SRMS(z) = z / sqrt(mean(z²) + eps), computed in fp32 (no gain, no mean subtraction).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tnllm.model.kernels.pdl import dependent_launch_prologue, launch_args


@triton.jit
def _add_rms_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    stride_x,
    stride_y,
    stride_a,
    n_cols,
    eps,
    HAS_Y: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n_cols
    x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_Y:
        x += tl.load(y_ptr + row * stride_y + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(x_ptr + row * stride_x + offs, x, mask=m)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(a_ptr + row * stride_a + offs, (x * r).to(a_ptr.dtype.element_ty), mask=m)


def _warps(block: int) -> int:
    return 8 if block >= 4096 else (4 if block >= 1024 else 1)


def add_rms(x: torch.Tensor, y: torch.Tensor | None, a: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x += y`` (in place, fp32 ``[R, N]``; skipped when y is None), then ``a[:] = SRMS(x)``."""
    rows, n = x.shape
    block = triton.next_power_of_2(n)
    _add_rms_kernel[(rows,)](
        x,
        y if y is not None else x,
        a,
        x.stride(0),
        y.stride(0) if y is not None else 0,
        a.stride(0),
        n,
        eps,
        HAS_Y=y is not None,
        BLOCK=block,
        num_warps=_warps(block),
        **launch_args(),
    )
    return a


@triton.jit
def _norm_gate_kernel(
    o_ptr,
    u_ptr,
    g_ptr,
    stride_o,
    stride_u,
    stride_g,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n_cols
    o = tl.load(o_ptr + row * stride_o + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * stride_u + offs, mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(o * o, axis=0) / n_cols + eps)
    tl.store(g_ptr + row * stride_g + offs, (o * r * u).to(g_ptr.dtype.element_ty), mask=m)


def norm_gate(
    o: torch.Tensor, u: torch.Tensor, eps: float = 1e-6, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``SRMS(o) ⊙ u`` for o, u ``[R, E]`` (u may be a strided slice); returns ``[R, E]`` in o's dtype."""
    rows, n = o.shape
    if out is None:
        out = torch.empty_like(o)
    block = triton.next_power_of_2(n)
    _norm_gate_kernel[(rows,)](
        o, u, out, o.stride(0), u.stride(0), out.stride(0), n, eps, BLOCK=block, num_warps=_warps(block),
        **launch_args(),
    )  # fmt: skip
    return out


@triton.jit
def _embed_rms_kernel(
    ids_ptr,
    emb_ptr,
    x_ptr,
    a_ptr,
    stride_e,
    stride_x,
    stride_a,
    n_cols,
    scale,
    eps,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    tok = tl.load(ids_ptr + row).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n_cols
    x = tl.load(emb_ptr + tok * stride_e + offs, mask=m, other=0.0).to(tl.float32) * scale
    tl.store(x_ptr + row * stride_x + offs, x, mask=m)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(a_ptr + row * stride_a + offs, (x * r).to(a_ptr.dtype.element_ty), mask=m)


def embed_rms(
    ids: torch.Tensor, emb: torch.Tensor, scale: float, x: torch.Tensor, a: torch.Tensor, eps: float = 1e-6
) -> None:
    """``x[:] = emb[ids] * scale`` (fp32 residual ``[R, D]``) and ``a[:] = SRMS(x)``, in one kernel."""
    rows = ids.shape[0]
    n = emb.shape[1]
    block = triton.next_power_of_2(n)
    _embed_rms_kernel[(rows,)](
        ids,
        emb,
        x,
        a,
        emb.stride(0),
        x.stride(0),
        a.stride(0),
        n,
        scale,
        eps,
        BLOCK=block,
        num_warps=_warps(block),
        **launch_args(),
    )


@triton.jit
def _glu_kernel(h_ptr, out_ptr, stride_h, stride_o, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    dependent_launch_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_cols
    h1 = tl.load(h_ptr + row * stride_h + offs, mask=m, other=0.0).to(tl.float32)
    h2 = tl.load(h_ptr + row * stride_h + n_cols + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (h1 * h2).to(out_ptr.dtype.element_ty), mask=m)


def glu_product(h: torch.Tensor) -> torch.Tensor:
    """``h1 ⊙ h2`` for ``h = [h1 | h2]`` ``[R, 2F]`` (feature stride 1): ``h[:, :F] * h[:, F:]``
    exactly (products in fp32, rounded once to h's dtype), as one of the fast path's kernels, so the
    GEMMs either side keep their dependent-launch overlap (pdl.py)."""
    rows, two_f = h.shape
    f = two_f // 2
    assert h.stride(1) == 1 and two_f == 2 * f
    out = torch.empty((rows, f), device=h.device, dtype=h.dtype)
    block = 1024
    _glu_kernel[(rows, triton.cdiv(f, block))](
        h, out, h.stride(0), out.stride(0), f, BLOCK=block, num_warps=4, **launch_args()
    )
    return out
