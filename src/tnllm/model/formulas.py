"""The model's closed-form constants, each defined once: decay slopes and rates, LRPE θ, state sizes.

The reference model (``modeling``), the CUDA fast path (``kernels.fastpath``), the checkpoint writer
and the engine's slot sizing all take them from here. ``tests/model/test_formulas.py`` pins them to
the values printed in docs/MODEL_SPEC.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def base_slopes(num_heads: int) -> list[float]:
    """ALiBi-style per-head base slopes in double precision (docs/MODEL_SPEC.md §4 step 5)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + base_slopes(2 * closest)[0::2][: num_heads - closest]


def layer_decay(num_heads: int, layer: int, num_layers: int) -> Tensor:
    """fp32 decay rate λ per head for one layer, shape ``[H]`` (docs/MODEL_SPEC.md §4 step 5).

    The layer factor is rounded to fp32 before the fp32 product, as the official fp32 tensor times a
    Python float does; rounding the exact product instead differs by one ulp on ~1/4 of the values.
    """
    base = torch.tensor(base_slopes(num_heads), dtype=torch.float32)
    factor = torch.tensor(1 - layer / (num_layers - 1) + 1e-5, dtype=torch.float32)
    return base * factor


def lrpe_theta_init(num_heads: int, head_dim: int) -> Tensor:
    """θ by the official init formula ``10000^(-2j/(H·head_dim))``, fp32 ``[H, 1, head_dim]``
    (docs/MODEL_SPEC.md §4 step 4; a checkpoint's stored θ is what a model uses)."""
    d = num_heads * head_dim
    return (10000 ** (-2 / d * torch.arange(d))).reshape(num_heads, 1, -1).to(torch.float32)


def state_shape(num_heads: int, head_dim: int, lrpe: bool) -> tuple[int, int, int]:
    """One layer's recurrent state ``(H, dk, d)``: ``dk = 2d`` on LRPE layers (docs/MODEL_SPEC.md §7.2)."""
    return (num_heads, 2 * head_dim if lrpe else head_dim, head_dim)


def state_bytes(shapes: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one sequence's state over all layers (docs/MODEL_SPEC.md §7.2)."""
    elem = torch.empty((), dtype=dtype, device="cpu").element_size()
    return sum(h * dk * d for h, dk, d in shapes) * elem
