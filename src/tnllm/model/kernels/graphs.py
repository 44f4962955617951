"""Decode steps captured in CUDA graphs, one graph per batch-size bucket.

A graph replays the whole decode step (embedding → 30 layers → head → fp32 logits) with one launch,
so the step costs GPU time only, not ~1,000 Python kernel launches. Inputs go through static device
buffers: one pinned host array ``[3, max_batch]`` (ids, positions, slots) is filled on the host and
copied with a single host-to-device copy; rows past the live batch carry slot -1, which the attention
kernel treats as padding (state untouched). The graphs are bound to one state pool (its addresses
are baked into the graph).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from tnllm.model.kernels.fastpath import FastTransnormer

log = logging.getLogger(__name__)


def default_buckets(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (the last bucket is ``max_batch`` itself)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return out


class DecodeGraphRunner:
    """Replays captured decode steps for a fixed pool; falls back to eager above ``max_batch``."""

    def __init__(
        self,
        fast: FastTransnormer,
        pool: list[torch.Tensor],
        max_batch: int,
        buckets: Sequence[int] | None = None,
    ):
        self.fast = fast
        self.pool = pool
        self.max_batch = max_batch
        self.buckets = sorted(buckets or default_buckets(max_batch))
        dev = pool[0].device
        self._host = torch.zeros((3, max_batch), dtype=torch.int64).pin_memory()
        self._host_np = self._host.numpy()  # numpy view: filling it costs microseconds, not tensor ops
        self._dev = torch.zeros((3, max_batch), dtype=torch.int64, device=dev)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self._mempool = torch.cuda.graph_pool_handle()
        self._copied = torch.cuda.Event()

    def _step(self, bs: int) -> torch.Tensor:
        ids, pos, slots = self._dev[0, :bs], self._dev[1, :bs], self._dev[2, :bs]
        return self.fast.decode(ids, pos, self.pool, slots)

    def capture(self) -> None:
        """Warm up (compile, autotune) and capture every bucket, largest first (shares one memory pool)."""
        self._dev[2].fill_(-1)  # padding slots only: warm-up and capture leave every state untouched
        self._dev[0].zero_()
        self._dev[1].zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for bs in self.buckets:
                self._step(bs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for bs in reversed(self.buckets):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._mempool):
                logits = self._step(bs)
            self._graphs[bs], self._logits[bs] = g, logits
        torch.cuda.synchronize()
        log.info("captured decode graphs for batch sizes %s", self.buckets)

    def bucket(self, batch: int) -> int | None:
        for bs in self.buckets:
            if bs >= batch:
                return bs
        return None

    def load_inputs(
        self,
        ids: Sequence[int] | Any,
        positions: Sequence[int] | Any,
        slots: Sequence[int] | Any,
        bs: int,
        n: int | None = None,
    ) -> None:
        """Stage one step's ``n`` rows of inputs in the static buffers (one host-to-device copy).

        An input given as a scalar fills its row (the caller overwrites it on the device)."""
        n = len(ids) if n is None else n
        h = self._host_np
        self._copied.synchronize()  # the previous step's copy has left the pinned buffer
        h[0, :n] = ids
        h[1, :n] = positions
        h[2, :n] = slots
        h[0:2, n:bs] = 0
        h[2, n:bs] = -1
        self._dev[:, :bs].copy_(self._host[:, :bs], non_blocking=True)
        self._copied.record()

    def replay(self, batch: int) -> torch.Tensor:
        """Run the bucket's graph for the inputs staged by ``load_inputs``; returns a view of the first
        ``batch`` rows of its fp32 logits (valid until the next replay of the same bucket)."""
        bs = self.bucket(batch)
        assert bs is not None and bs in self._graphs, f"batch {batch} has no captured graph"
        self._graphs[bs].replay()
        return self._logits[bs][:batch]

    def decode(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``FastTransnormer.decode``'s contract (fp32 logits ``[B, V]``), through a graph when one fits.

        Each input may be on the host (staged through the pinned buffer) or already on the device
        (copied device to device after it): neither waits for the GPU, so a step can be launched
        from the previous step's sampled ids while that step is still running."""
        batch = int(input_ids.shape[0])
        bs = self.bucket(batch)
        if bs is None or bs not in self._graphs:
            dev = self._dev.device
            return self.fast.decode(input_ids.to(dev), positions.to(dev), self.pool, slots.to(dev))
        parts = (input_ids, positions, slots)
        on_device = [(row, t) for row, t in enumerate(parts) if t.device.type == "cuda"]
        if len(on_device) < len(parts):
            host = [t.numpy() if t.device.type == "cpu" else 0 for t in parts]
            self.load_inputs(host[0], host[1], host[2], bs, n=batch)
        for row, t in on_device:
            self._dev[row, :batch].copy_(t)
        if len(on_device) == len(parts) and bs > batch:
            self._dev[2, batch:bs].fill_(-1)
        return self.replay(batch)
