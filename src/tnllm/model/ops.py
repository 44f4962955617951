"""The reference attention ops: q/k activations, LRPE and decayed causal linear attention (PyTorch).

Shapes: ``N`` sequences, ``H`` heads, ``T`` tokens, ``dk`` q/k width (2d on LRPE layers), ``d`` v width.
Every sequence carries its own fp32 state ``S [N, H, dk, d]``; positions are explicit per sequence.

The reference path follows docs/MODEL_SPEC.md §5.2/§5.3 operation by operation in fp32, which reproduces the
official fp32 logits. These functions are the contract: the CUDA kernels (``tnllm.model.kernels``)
provide the same ``prefill_attention`` / ``decode_attention``, and ``tnllm.model.seam`` picks one
of the two for a device (this module imports neither; the kernels may fall back on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 256  # official prefill block length


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


def quadratic_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor) -> Tensor:
    """Direct O(T²) evaluation from a zero state (a test oracle, docs/MODEL_SPEC.md §4 step 6), fp64."""
    t = q.shape[2]
    idx = torch.arange(t, dtype=torch.float64, device=q.device)
    dist = idx[:, None] - idx[None, :]  # [T, T]
    lam = decay.to(device=q.device, dtype=torch.float64).reshape(-1, 1, 1)
    mask = torch.where(dist >= 0, torch.exp(-lam * dist.clamp(min=0)), torch.zeros((), dtype=torch.float64))
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * mask
    return torch.matmul(scores, v.double())
