"""CUDA fast path for TransNormerLLM (GPU only; nothing here is imported on a CPU-only path).

This package is the kernels module of the attention seam (``tnllm.model.seam.ops_for``): it provides the
reference's ``prefill_attention`` / ``decode_attention`` contract on CUDA tensors through fla-core,
plus ``available()``. Importing the package itself pulls in neither triton nor fla.

Modules:
- ``attention``: Triton decode step over a slot pool (in place, one pass over the state) and the
  prefill wrapper around fla-core's ``chunk_simple_gla``.
- ``fused``: Triton embedding/residual-add + SRMS and SRMS + gate kernels.
- ``gemv``: a batch-1 matrix-vector kernel (bench/gpu_micro.py compares it with cuBLAS).
- ``fastpath``: ``FastTransnormer``, the model's prefill/decode on CUDA built from its weights.
- ``graphs``: ``DecodeGraphRunner``, decode steps captured in CUDA graphs per batch-size bucket.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """True when CUDA, triton and fla-core are all importable (else the reference ops are used)."""
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("triton") is not None
        and importlib.util.find_spec("fla") is not None
    )


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """The reference contract (``tnllm.model.ops.prefill_attention``) on CUDA via ``chunk_simple_gla``.

    q, k ``[N, H, T, dk]`` (activated, rotated), v ``[N, H, T, d]``, decay λ ``[H]``, state fp32
    ``[N, H, dk, d]`` (not modified). Returns (out ``[N, H, T, d]`` in q's dtype, new fp32 state).
    """
    from tnllm.model.kernels.attention import exact_prefill

    if exact_prefill(q, v):
        from tnllm.model import ops

        return ops.prefill_attention(q, k, v, decay, state)
    from fla.ops.simple_gla import chunk_simple_gla

    g_gamma = -decay.to(device=q.device, dtype=torch.float32)
    o, new = chunk_simple_gla(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        g_gamma=g_gamma,
        scale=1.0,
        initial_state=state.float(),
        output_final_state=True,
    )
    return o.transpose(1, 2), new


def decode_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """The reference decode contract on CUDA via ``fused_recurrent_simple_gla`` (exact fp32 state math).

    q, k ``[N, H, dk]``, v ``[N, H, d]``, decay λ ``[H]``, state fp32 ``[N, H, dk, d]`` (not modified).
    """
    from fla.ops.simple_gla import fused_recurrent_simple_gla

    g_gamma = -decay.to(device=q.device, dtype=torch.float32)
    o, new = fused_recurrent_simple_gla(
        q.unsqueeze(1),
        k.unsqueeze(1),
        v.unsqueeze(1),
        g_gamma=g_gamma,
        scale=1.0,
        initial_state=state.float(),
        output_final_state=True,
    )
    return o[:, 0], new


def decode_attention_(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> Tensor:
    """In-place form of ``decode_attention`` (``seam.decode_step_inplace`` uses it): one pass over
    ``state`` (a contiguous ``[N, H, dk, d]`` view, e.g. a slice of the pool) with the Triton kernel.

    q, k ``[N, H, dk]`` already activated and rotated, v ``[N, H, d]``. Returns out ``[N, H, d]``.
    """
    from tnllm.model.kernels.attention import decode_attention as step

    n, h, d = v.shape
    q, k, v = (t.contiguous().reshape(n, -1) for t in (q, k, v))
    ratio = torch.exp(-decay.to(device=q.device, dtype=torch.float32))
    slots = torch.arange(n, device=q.device)
    out = step(q, k, v, state, slots, ratio, silu=False)
    return out.reshape(n, h, d)
