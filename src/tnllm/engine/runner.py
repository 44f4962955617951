"""The engine's tensor work: the slot pool, the backend, input tensors, prefill, decode, slot swaps.

``ModelRunner`` owns the state pool and the ``ModelBackend`` the factory picked (reference or fast);
the core loop hands it scheduled chunks and decode rows and gets logits back. ``Pending`` is a
launched step whose sampled ids are still on the device. Beside the states, a count pool (one row
of generated-token counts per slot, for presence/frequency penalties) is made on first need and
moves with its slot's state (reset, swap, fork).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tnllm.engine.backend import ModelBackend, ReferenceBackend
from tnllm.engine.prefix import PrefixCache
from tnllm.engine.request import LiveRequest
from tnllm.engine.sampling import BatchSampler
from tnllm.engine.scheduler import PrefillChunk, Sequence
from tnllm.model.modeling import TransnormerLM

Seq = Sequence[LiveRequest]


@dataclass
class Pending:
    """A step whose sampled ids are still on the device (read by the next step)."""

    rows: list[Seq]
    tokens: torch.Tensor  # [R] sampled ids on the device
    sampler: BatchSampler
    chainable: bool  # rows are the packed decode batch (row i in slot i), nothing else ran
    payload: torch.Tensor | None = None  # sampling.logprob_payload (ids + logprobs), when asked
    host: torch.Tensor | None = None  # pinned copy of ``payload`` or else ``tokens`` (CUDA)
    copied: Any = None  # CUDA event recorded after the copy
    started: Any = None  # CUDA event recorded before the step's first launch (timing)

    def read(self) -> tuple[list[int], list[list[float]] | None]:
        """The sampled ids on the host, and the payload rows when there is one (one copy; waits
        for this step only, not for later launches)."""
        data = self.payload if self.payload is not None else self.tokens
        if self.copied is not None:
            self.copied.synchronize()
            assert self.host is not None
            data = self.host
        if self.payload is None:
            return [int(t) for t in data.tolist()], None
        rows: list[list[float]] = data.tolist()
        return [int(r[0]) for r in rows], rows


class ModelRunner:
    """One model's backend and its pool of per-sequence recurrent states."""

    def __init__(
        self,
        model: TransnormerLM,
        slots: int,
        backend: ModelBackend | None = None,
        state_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.backend = backend if backend is not None else ReferenceBackend(model)
        self.device = next(model.parameters()).device
        self.pool = model.new_state_pool(slots, device=self.device, dtype=state_dtype)
        self.slots = slots
        self._counts: torch.Tensor | None = None

    def counts(self) -> torch.Tensor:
        """The ``[slots, V]`` float32 count pool (made, zeroed, on first use)."""
        if self._counts is None:
            vocab = int(self.model.config.vocab_size)
            self._counts = torch.zeros(self.slots, vocab, device=self.device)
        return self._counts

    def _count_prior(self, seq: Seq) -> None:
        """A resumed choice's earlier tokens count for its presence/frequency penalties, as they
        did when they were sampled."""
        live = seq.request
        p = live.params
        if not live.prior_ids or (p.presence_penalty == 0.0 and p.frequency_penalty == 0.0):
            return
        counts = self.counts()
        ids = torch.tensor(live.prior_ids, dtype=torch.long, device=self.device)
        counts[seq.slot].index_put_((ids,), torch.ones(ids.shape, device=self.device), accumulate=True)

    def prepare(self, max_batch: int) -> bool:
        """Serving start-up of the backend on this pool (kernels tuned, graphs captured)."""
        return self.backend.prepare(self.pool, max_batch)

    def mark(self) -> Any:
        """A timing event recorded now on the device's stream (CUDA), else None."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def pend(
        self,
        rows: list[Seq],
        sampled: tuple[torch.Tensor, torch.Tensor | None],
        sampler: BatchSampler,
        chainable: bool,
        started: Any,
    ) -> Pending:
        """A launched step; on CUDA its ids (or payload) start copying to pinned host memory now."""
        tokens, payload = sampled
        pending = Pending(rows, tokens, sampler, chainable, payload, started=started)
        data = payload if payload is not None else tokens
        if data.device.type == "cuda":
            pending.host = torch.empty(data.shape, dtype=data.dtype, pin_memory=True)
            pending.host.copy_(data, non_blocking=True)
            pending.copied = self.mark()
        return pending

    def prefill(
        self, chunks: list[PrefillChunk[LiveRequest]], prefix: PrefixCache | None = None
    ) -> list[torch.Tensor]:
        """Consume prompt chunks (one packed forward); returns the last logits of each chunk that
        completes its prompt. A sequence's first chunk starts from its saved prefix state
        (``prefix.start``) or from zeros."""
        if not chunks:
            return []
        for ch in chunks:
            if ch.start == ch.seq.cached:
                if prefix is not None:
                    prefix.start(ch.seq, self.pool, self.model.reset_slot)
                else:
                    self.model.reset_slot(self.pool, ch.seq.slot)
                if self._counts is not None:
                    self._counts[ch.seq.slot].zero_()
                self._count_prior(ch.seq)
        logits = self.backend.prefill_many(
            [(ch.seq.prompt_ids[ch.start : ch.start + ch.length], ch.start, ch.seq.slot) for ch in chunks],
            self.pool,
        )
        for ch in chunks:
            ch.seq.prefilled += ch.length
            ch.seq.consumed = ch.seq.prefilled
        done = [i for i, ch in enumerate(chunks) if ch.completes_prompt]
        if not done:
            return []
        if len(done) == len(chunks):
            return [logits]
        return [logits[torch.tensor(done, device=logits.device)]]

    def swap_slots(self, swaps: list[tuple[int, int]]) -> None:
        """Exchange the states of slot pairs (the scheduler packs decoding sequences low).

        The pairs are disjoint (a mover leaves a slot >= n for a hole < n), so one gather and one
        scatter per layer exchange them all, with one host-to-device copy of the indices."""
        if not swaps:
            return
        a = [x for x, _ in swaps]
        b = [y for _, y in swaps]
        assert len(set(a + b)) == 2 * len(swaps), "slot swaps must be disjoint pairs"
        idx = torch.tensor([a + b, b + a], device=self.device)  # row 0: targets, row 1: sources
        for layer_state in self._pools():  # [slots, H, dk, d]
            layer_state.index_copy_(0, idx[0], layer_state.index_select(0, idx[1]))

    def save_slot(self, slot: int) -> list[torch.Tensor]:
        """A host copy of one slot's state, every layer (and its presence/frequency counts once the
        count pool exists), bit for bit in the pool's dtype (pinned on CUDA so it comes back with one
        asynchronous copy)."""
        pinned = self.device.type == "cuda"
        saved = []
        for layer_state in self._pools():
            host = torch.empty(layer_state.shape[1:], dtype=layer_state.dtype, pin_memory=pinned)
            host.copy_(layer_state[slot], non_blocking=pinned)
            saved.append(host)
        return saved

    def load_slot(self, slot: int, saved: list[torch.Tensor]) -> None:
        """Put a state ``save_slot`` took back into ``slot``."""
        pools = self._pools()
        if len(saved) < len(pools):  # saved before the count pool existed: its counts were zero
            pools[-1][slot].zero_()
        for layer_state, host in zip(pools, saved, strict=False):
            layer_state[slot].copy_(host, non_blocking=True)

    def fork(self, src: int, dsts: list[int]) -> None:
        """Copy slot ``src``'s state (its prompt, prefilled once) into each of ``dsts``."""
        if not dsts:
            return
        idx = torch.tensor(dsts, device=self.device)
        for layer_state in self._pools():
            source = layer_state[src : src + 1].clone()  # one slot: the copy may not alias the pool
            layer_state.index_copy_(0, idx, source.expand(len(dsts), *layer_state.shape[1:]))

    def _pools(self) -> list[torch.Tensor]:
        """Everything kept per slot: each layer's states, and the counts once made."""
        return self.pool if self._counts is None else [*self.pool, self._counts]

    def decode(self, seqs: list[Seq], positions: list[int], ids: torch.Tensor | None = None) -> torch.Tensor:
        """One batched decode step: each sequence feeds its last token (or ``ids``, already on the
        device) at its own position.

        The scheduler packed the decoding sequences into slots 0..B-1, so the backend updates that
        block of the pool in place (a ``slice``, no gather/scatter).
        """
        assert all(s.slot == i for i, s in enumerate(seqs)), "decode slots are packed"
        # host tensors: the backend moves them (the CUDA graph path stages them in one pinned copy)
        if ids is None:
            ids = torch.tensor([s.output_ids[-1] for s in seqs], dtype=torch.long)
        for s, p in zip(seqs, positions, strict=True):
            s.consumed = p + 1  # the state now holds every token up to this one
        pos = torch.tensor(positions, dtype=torch.long)
        return self.backend.decode(ids, pos, self.pool, slice(0, len(seqs))).float()  # [B, V]
