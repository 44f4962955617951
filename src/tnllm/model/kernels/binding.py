"""Binds a ``TransnormerLM`` on CUDA to its fast path: ``FastTransnormer`` plus optional decode graphs.

``TransnormerLM.prefill/decode`` call :func:`fast_path_for` when the weights are on a GPU; the result
is cached on the model object. ``prepare(pool, max_batch)`` (worker start-up) compiles and tunes every
kernel variant and captures the decode graphs for that pool; decode calls on that pool then replay a
graph, other pools run the same kernels eagerly.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from tnllm.model.kernels.fastpath import FastTransnormer
from tnllm.model.kernels.graphs import DecodeGraphRunner

log = logging.getLogger(__name__)
_ATTR = "_tnllm_fast_binding"


class FastBinding:
    """The fast path of one model; same prefill/decode contract as ``TransnormerLM``."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.fast = FastTransnormer.from_model(model)
        self.device = model.device
        self._embed_ptr = model.model.embed_tokens.weight.data_ptr()
        self.runner: DecodeGraphRunner | None = None

    def prepare(self, pool: list[Tensor], max_batch: int, scratch_slot: int | None = None) -> None:
        """Warm every kernel (fla autotunes ~30 s per variant on first use) and capture decode graphs
        for batch buckets up to ``max_batch`` on ``pool``. ``scratch_slot`` (default: the last slot) and the
        slot below it are used for the warm-up and zeroed afterwards, so call this before serving."""
        slot = pool[0].shape[0] - 1 if scratch_slot is None else scratch_slot
        self.fast.warmup(pool, slot)
        runner = DecodeGraphRunner(self.fast, pool, max_batch=max_batch)
        runner.capture()
        self.runner = runner

    def prefill(
        self, input_ids: Tensor, start_pos: int, pool: list[Tensor], slot: int, last_only: bool
    ) -> Tensor:
        return self.fast.prefill(input_ids.to(self.device), start_pos, pool, slot, last_only)

    def prefill_many(self, chunks: list[tuple[list[int], int, int]], pool: list[Tensor]) -> Tensor:
        return self.fast.prefill_many(chunks, pool)

    def decode(
        self, input_ids: Tensor, positions: Tensor, pool: list[Tensor], slots: Tensor | slice
    ) -> Tensor:
        """Logits ``[B, V]`` fp32. Through a graph the tensor is a view of a static buffer, valid until the
        next decode call (sample from it before stepping again). ``slots`` may be a slice of the pool."""
        if isinstance(slots, slice):
            slots = torch.arange(slots.start or 0, slots.stop, dtype=torch.long)
        r = self.runner
        if r is not None and r.pool[0].data_ptr() == pool[0].data_ptr() and input_ids.shape[0] <= r.max_batch:
            return r.decode(input_ids, positions, slots)
        dev = self.device
        return self.fast.decode(input_ids.to(dev), positions.to(dev), pool, slots.to(dev))


def fast_path_for(model) -> FastBinding | None:  # type: ignore[no-untyped-def]
    """The model's fast path, built on first use; None when the kernels or the config don't fit."""
    from tnllm.model import kernels

    binding = model.__dict__.get(_ATTR)
    if binding is not None and binding._embed_ptr == model.model.embed_tokens.weight.data_ptr():
        return binding
    if not (kernels.available() and FastTransnormer.supports(model)):
        return None
    binding = FastBinding(model)
    model.__dict__[_ATTR] = binding
    log.info("CUDA fast path enabled (%s weights on %s)", model.dtype, model.device)
    return binding


def prepare_fast_decode(model, pool: list[Tensor], max_batch: int) -> bool:  # type: ignore[no-untyped-def]
    """Worker start-up hook: warm the kernels and capture decode graphs. False when no fast path."""
    binding = fast_path_for(model) if model.device.type == "cuda" else None
    if binding is None:
        return False
    with torch.no_grad():
        binding.prepare(pool, max_batch)
    return True
