"""The model backend an engine runs: the reference ``TransnormerLM`` methods or the CUDA fast path.

``ModelBackend`` is the one interface the engine's model runner calls (``prefill``, ``prefill_many``,
``decode``, ``prepare``); ``select_backend`` (used by the engine factory) picks one explicitly from
the weights' device, ``kernels.available()`` and ``FastTransnormer.supports``, and logs the choice.
Nothing is cached on the model: the runner holds its backend.

The fast backend owns the module it is built from: ``FastTransnormer.from_model`` concatenates each
layer's l1/l2 weights into one ``[2F, D]`` tensor and re-points the module's two parameters at views
of it. The values are unchanged, so the reference methods still compute the same numbers, and no
weight is stored twice on the GPU (a copy would cost 2·F·D more weights per layer).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from tnllm.model.modeling import TransnormerLM

log = logging.getLogger(__name__)

#: One prompt chunk: (token ids, first position, slot).
Chunk = tuple[list[int], int, int]


class ModelBackend(ABC):
    """Prefill and decode over a slot pool (the contract of ``TransnormerLM.prefill/decode``)."""

    name: str

    @abstractmethod
    def prefill(
        self, input_ids: Tensor, start_pos: int, pool: list[Tensor], slot: int, last_only: bool = True
    ) -> Tensor:
        """``input_ids [T]`` at positions ``start_pos ..`` into ``slot``; logits ``[V]`` (``[T, V]``)."""

    @abstractmethod
    def prefill_many(self, chunks: list[Chunk], pool: list[Tensor]) -> Tensor:
        """Chunks on distinct slots -> fp32 logits ``[N, V]`` of each chunk's last token."""

    @abstractmethod
    def decode(
        self, input_ids: Tensor, positions: Tensor, pool: list[Tensor], slots: Tensor | slice
    ) -> Tensor:
        """One token for each of B rows -> logits ``[B, V]`` (sample before the next call: a graph's
        output is a view of a static buffer). ``slots`` may be a slice of the pool."""

    def prepare(self, pool: list[Tensor], max_batch: int) -> bool:
        """Serving start-up on ``pool``: warm kernels, capture graphs. False when there is nothing to do."""
        return False


class ReferenceBackend(ModelBackend):
    """The reference model's own methods (any device; the attention ops follow ``model.seam``)."""

    name = "reference"

    def __init__(self, model: TransnormerLM) -> None:
        self.model = model

    def prefill(
        self, input_ids: Tensor, start_pos: int, pool: list[Tensor], slot: int, last_only: bool = True
    ) -> Tensor:
        return self.model.prefill(input_ids, start_pos, pool, slot, last_only)

    def prefill_many(self, chunks: list[Chunk], pool: list[Tensor]) -> Tensor:
        return self.model.prefill_many(chunks, pool)

    def decode(
        self, input_ids: Tensor, positions: Tensor, pool: list[Tensor], slots: Tensor | slice
    ) -> Tensor:
        return self.model.decode(input_ids, positions, pool, slots)


class FastBackend(ModelBackend):
    """``FastTransnormer`` plus decode graphs for one pool (CUDA, triton and fla-core)."""

    name = "fast"

    def __init__(self, model: TransnormerLM) -> None:
        from tnllm.model.kernels.fastpath import FastTransnormer

        self.fast = FastTransnormer.from_model(model)
        self.device = model.device
        self.runner: Any = None  # kernels.graphs.DecodeGraphRunner once prepared

    def prepare(self, pool: list[Tensor], max_batch: int, scratch_slot: int | None = None) -> bool:
        """Warm every kernel variant (fla autotunes each on first use) and capture decode graphs for
        batch buckets up to ``max_batch`` on ``pool``. ``scratch_slot`` (default: the last slot) and the
        slot below it are used for the warm-up and zeroed afterwards, so call this before serving."""
        from tnllm.model.kernels.graphs import DecodeGraphRunner

        slot = pool[0].shape[0] - 1 if scratch_slot is None else scratch_slot
        with torch.no_grad():
            self.fast.warmup(pool, slot)
            runner = DecodeGraphRunner(self.fast, pool, max_batch=max_batch)
            runner.capture()
        self.runner = runner
        return True

    def prefill(
        self, input_ids: Tensor, start_pos: int, pool: list[Tensor], slot: int, last_only: bool = True
    ) -> Tensor:
        if input_ids.shape[0] == 0:
            raise ValueError("prefill needs at least one token")
        return self.fast.prefill(input_ids.to(self.device), start_pos, pool, slot, last_only)

    def prefill_many(self, chunks: list[Chunk], pool: list[Tensor]) -> Tensor:
        if not chunks:
            raise ValueError("prefill_many needs at least one chunk")
        return self.fast.prefill_many(chunks, pool)

    def decode(
        self, input_ids: Tensor, positions: Tensor, pool: list[Tensor], slots: Tensor | slice
    ) -> Tensor:
        """Through a captured graph when ``pool`` is the prepared one and the batch fits, else eager."""
        if isinstance(slots, slice):
            slots = torch.arange(slots.start or 0, slots.stop, dtype=torch.long)
        r = self.runner
        if r is not None and r.pool[0].data_ptr() == pool[0].data_ptr() and input_ids.shape[0] <= r.max_batch:
            return r.decode(input_ids, positions, slots)
        dev = self.device
        return self.fast.decode(input_ids.to(dev), positions.to(dev), pool, slots.to(dev))


def fast_path_fits(model: TransnormerLM) -> bool:
    """CUDA weights, the kernels importable, and a config the fast path supports."""
    if model.device.type != "cuda":
        return False
    from tnllm.model import kernels

    if not kernels.available():  # before fastpath: importing it imports triton
        return False
    from tnllm.model.kernels.fastpath import FastTransnormer

    return FastTransnormer.supports(model)


def select_backend(model: TransnormerLM) -> ModelBackend:
    """The fast backend where it fits (``fast_path_fits``), else the reference one; logged."""
    backend: ModelBackend = FastBackend(model) if fast_path_fits(model) else ReferenceBackend(model)
    log.info("engine backend: %s (%s weights on %s)", backend.name, model.dtype, model.device)
    return backend
