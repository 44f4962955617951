"""The attention seam: decay rates, LRPE and decayed causal linear attention (reference PyTorch).

Shapes: ``N`` sequences, ``H`` heads, ``T`` tokens, ``dk`` q/k width (2d on LRPE layers), ``d`` v width.
Every sequence carries its own fp32 state ``S [N, H, dk, d]``; positions are explicit per sequence.

The reference path follows docs/MODEL_SPEC.md §5.2/§5.3 operation by operation in fp32, which reproduces the
official fp32 logits. A fast implementation (``tnllm.model.kernels``) provides the same two functions,
``prefill_attention`` and ``decode_attention``; :func:`ops_for` picks one from the weights' device.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 256  # official prefill block length


class AttentionOps(Protocol):
    """What a kernel module provides (the reference functions below are the contract)."""

    def prefill_attention(
        self, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]: ...

    def decode_attention(
        self, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]: ...


# ---- decay rates (docs/MODEL_SPEC.md §4 step 5) ------------------------------------------------------
def base_slopes(num_heads: int) -> list[float]:
    """ALiBi-style per-head base slopes in double precision (powers of two and not)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + base_slopes(2 * closest)[0::2][: num_heads - closest]


def layer_decay(num_heads: int, layer: int, num_layers: int) -> Tensor:
    """fp32 decay rate λ per head for one layer, shape ``[H]``.

    The layer factor is rounded to fp32 before the fp32 product, as the official fp32 tensor times a
    Python float does; rounding the exact product instead differs by one ulp on ~1/4 of the values.
    """
    base = torch.tensor(base_slopes(num_heads), dtype=torch.float32)
    factor = torch.tensor(1 - layer / (num_layers - 1) + 1e-5, dtype=torch.float32)
    return base * factor


# ---- activations and LRPE --------------------------------------------------------------------
def _exp_act(x: Tensor) -> Tensor:
    return torch.exp(x - x.amax(dim=-1, keepdim=True))


_ACTS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "elu": F.elu,
    "sigmoid": torch.sigmoid,
    "leak": F.leaky_relu,
    "1+elu": lambda x: 1 + F.elu(x),
    "2+elu": lambda x: 2 + F.elu(x),
    "sine": torch.sin,
    "exp": _exp_act,
}


def activation(name: str):  # type: ignore[no-untyped-def]
    """The q/k activation for an official ``linear_act_fun`` name; unknown names are identity."""
    return _ACTS.get(name, lambda x: x)


def lrpe(x: Tensor, theta: Tensor, positions: Tensor) -> Tensor:
    """Apply LRPE: ``x [N, H, T, d]`` at ``positions [N, T]`` -> ``[N, H, T, 2d]`` (fp32 angles)."""
    pos = positions.to(device=x.device, dtype=torch.float32)[:, None, :, None]  # [N, 1, T, 1]
    angle = theta.to(torch.float32)[None] * pos  # [1, H, 1, d] * [N, 1, T, 1] -> [N, H, T, d]
    xf = x.to(torch.float32)
    return torch.cat([xf * torch.cos(angle), xf * torch.sin(angle)], dim=-1).to(x.dtype)


# ---- reference attention ---------------------------------------------------------------------
def _block_tables(lam: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 decay tables for blocks of ``size`` rows: qdec, kdec ``[H, size, 1]``, W ``[H, size, size]``."""
    r = torch.arange(1, size + 1, dtype=torch.float32, device=lam.device).reshape(-1, 1)  # [size, 1]
    q_decay = torch.exp(-lam * r)
    k_decay = torch.exp(-lam * (size - r))
    index = r - r.reshape(1, -1)  # [size, size], a - b
    s_index = lam * index[None]
    w = torch.exp(torch.where(index >= 0, -s_index, float("-inf")))
    return q_decay, k_decay, w


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """Block-wise prefill (docs/MODEL_SPEC.md §5.3) continuing from ``state``.

    q, k ``[N, H, T, dk]``, v ``[N, H, T, d]``, decay ``[H]`` fp32, state ``[N, H, dk, d]`` fp32.
    Returns (out ``[N, H, T, d]`` fp32, new state ``[N, H, dk, d]`` fp32); ``state`` is not modified.
    """
    n, h, t, _ = q.shape
    q, k, v = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
    lam = decay.to(device=q.device, dtype=torch.float32).reshape(h, 1, 1)
    q_decay, k_decay, w = _block_tables(lam, min(t, BLOCK))
    kv = state.to(torch.float32)
    out = torch.empty((n, h, t, v.shape[-1]), dtype=torch.float32, device=q.device)
    for start in range(0, t, BLOCK):
        end = min(start + BLOCK, t)
        m = end - start
        # contiguous blocks: the official code does the same, and BLAS rounding depends on layout
        qi = q[:, :, start:end].contiguous()
        ki = k[:, :, start:end].contiguous()
        vi = v[:, :, start:end].contiguous()
        inter = torch.matmul(qi * q_decay[:, :m], kv)
        qk = torch.matmul(qi, ki.transpose(-1, -2)) * w[:, :m, :m]
        intra = torch.matmul(qk, vi)
        out[:, :, start:end] = inter + intra
        block_decay = torch.exp(-lam * m)
        kv = block_decay * kv + torch.matmul((ki * k_decay[:, -m:]).transpose(-1, -2), vi)
    return out, kv


def decode_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrent step (docs/MODEL_SPEC.md §5.2) for N sequences: decay, add, read.

    q, k ``[N, H, dk]``, v ``[N, H, d]``, decay ``[H]``, state ``[N, H, dk, d]`` fp32.
    Returns (out ``[N, H, d]`` fp32, new state); ``state`` is not modified.
    """
    h = q.shape[1]
    q, k, v = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
    ratio = torch.exp(-decay.to(device=q.device, dtype=torch.float32)).reshape(1, h, 1, 1)
    kv = (ratio * state).addcmul_(k.unsqueeze(-1), v.unsqueeze(-2))  # same op as decode_attention_
    out = torch.matmul(q.unsqueeze(-2), kv).squeeze(-2)  # [N, H, 1, dk] @ [N, H, dk, d]
    return out, kv


def decode_attention_(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor) -> Tensor:
    """:func:`decode_attention` updating ``state [N, H, dk, d]`` in place; returns out ``[N, H, d]``.

    Same operations in the same order (decay, add the outer product, read), without the temporaries
    and without gathering/scattering slot rows: the serving engine passes a view of its state pool.
    """
    h = q.shape[1]
    q, k, v = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
    ratio = torch.exp(-decay.to(device=q.device, dtype=torch.float32)).reshape(1, h, 1, 1)
    # addcmul_ forms each k·v product and adds it in one pass over the state: no [N, H, dk, d]
    # temporary, two fewer passes over memory than mul-then-add (the step's main cost at 64 slots).
    state.mul_(ratio).addcmul_(k.unsqueeze(-1), v.unsqueeze(-2))  # [N, H, dk, 1] * [N, H, 1, d]
    return torch.matmul(q.unsqueeze(-2), state).squeeze(-2)  # [N, H, 1, dk] @ [N, H, dk, d]


def decode_step_inplace(
    ops: AttentionOps, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
) -> Tensor:
    """One recurrent step that writes the new state into ``state``: the implementation's in-place op
    (``decode_attention_``) when it has one, else its out-of-place op and a copy."""
    inplace = getattr(ops, "decode_attention_", None)
    if inplace is not None:
        return cast(Tensor, inplace(q, k, v, decay, state))
    out, new = ops.decode_attention(q, k, v, decay, state)
    state.copy_(new)
    return out


def quadratic_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor) -> Tensor:
    """Direct O(T²) evaluation from a zero state (a test oracle, docs/MODEL_SPEC.md §4 step 6), fp64."""
    t = q.shape[2]
    idx = torch.arange(t, dtype=torch.float64, device=q.device)
    dist = idx[:, None] - idx[None, :]  # [T, T]
    lam = decay.to(device=q.device, dtype=torch.float64).reshape(-1, 1, 1)
    mask = torch.where(dist >= 0, torch.exp(-lam * dist.clamp(min=0)), torch.zeros((), dtype=torch.float64))
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * mask
    return torch.matmul(scores, v.double())


# ---- implementation choice ------------------------------------------------------------------
def _reference() -> ModuleType:
    import sys

    return sys.modules[__name__]


def ops_for(device: torch.device) -> AttentionOps:
    """Attention implementation for weights on ``device``: CUDA kernels when present, else this module."""
    return _ops_for_type(device.type)


@functools.cache
def _ops_for_type(device_type: str) -> AttentionOps:
    # Cached: a failed import is not remembered by Python and would be retried on every forward.
    if device_type == "cuda":
        try:
            from tnllm.model import kernels  # type: ignore[attr-defined]
        except ImportError:
            pass
        else:
            available = getattr(kernels, "available", lambda: True)
            if available():
                return cast(AttentionOps, kernels)
    return cast(AttentionOps, _reference())
