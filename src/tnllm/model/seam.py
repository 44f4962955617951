"""The attention seam: which implementation of the attention contract a device runs.

The contract is ``tnllm.model.ops`` (reference PyTorch, any device); on CUDA with triton and fla-core
the kernels package (``tnllm.model.kernels``) provides the same two functions. Imports run one way:
this module imports both, the kernels import the reference ops, the reference ops import neither.
"""

from __future__ import annotations

import functools
from typing import Protocol, cast

from torch import Tensor, device

from tnllm.model import ops


class AttentionOps(Protocol):
    """What an implementation provides (the reference functions in ``ops`` are the contract)."""

    def prefill_attention(
        self, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]: ...

    def decode_attention(
        self, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]: ...


def ops_for(dev: device) -> AttentionOps:
    """Attention implementation for weights on ``dev``: CUDA kernels when present, else the reference."""
    return _ops_for_type(dev.type)


@functools.cache
def _ops_for_type(device_type: str) -> AttentionOps:
    # Cached: a failed import is not remembered by Python and would be retried on every forward.
    if device_type == "cuda":
        try:
            from tnllm.model import kernels
        except ImportError:
            pass
        else:
            if kernels.available():
                return cast(AttentionOps, kernels)
    return cast(AttentionOps, ops)


def decode_step_inplace(
    impl: AttentionOps, q: Tensor, k: Tensor, v: Tensor, decay: Tensor, state: Tensor
) -> Tensor:
    """One recurrent step that writes the new state into ``state``: the implementation's in-place op
    (``decode_attention_``) when it has one, else its out-of-place op and a copy."""
    inplace = getattr(impl, "decode_attention_", None)
    if inplace is not None:
        return cast(Tensor, inplace(q, k, v, decay, state))
    out, new = impl.decode_attention(q, k, v, decay, state)
    state.copy_(new)
    return out
