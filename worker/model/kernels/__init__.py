"""CUDA fast path for TransNormerLLM (GPU only; imported lazily, never on a CPU-only path).

Modules:
- ``attention``: Triton decode step over a slot pool (in place, one pass over the state) and the
  prefill wrapper around fla-core's ``chunk_simple_gla``.
- ``fused``: Triton residual-add + SRMS and SRMS + gate kernels.
- ``fastpath``: ``FastTransnormer``, the model's prefill/decode on CUDA built from its weights.
- ``graphs``: ``DecodeGraphRunner``, decode steps captured in CUDA graphs per batch-size bucket.

Nothing here runs at import time of ``worker.model``; ``import worker.model.kernels.fastpath`` needs
triton (and fla-core for prefill).
"""
