"""The engine's use of its state store: resume a prompt from its longest saved prefix, save states.

``PrefixCache`` is what the core loop and the scheduler call (small hooks, no tensor code there):

- ``admit(seq)`` (the scheduler's admission hook, when a sequence gets a slot): the longest saved
  prefix of its prompt, leaving at least one token to prefill (its logits give the first token),
  becomes the sequence's starting point (``seq.cached`` = ``seq.prefilled`` = its length) and its
  state is held for the first chunk.
- ``start(seq, pool)`` (the runner, before a sequence's first chunk): that state copied into the
  slot, else the slot zeroed.
- ``after_prefill(chunks, pool)``: the state at the end of every prefill chunk is saved (chunks end
  at the request's ``cache_points``: turn boundaries, and at the prefill budget's boundaries for
  long prompts; the last one is the whole prompt's state), pinned under ``EngineRequest.pin``
  when the chunk completes the prompt.
- ``finished(seq, pool)``: the final state of a finished sequence (prompt + output ids it consumed;
  the next turn of a conversation resumes from it).

States of fewer than ``StateStore.min_tokens`` tokens are not saved unless pinned. A request with
``state_cache=False`` neither reads nor writes the store. Without a store
(``states=None``) every hook does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from tnllm.engine.request import LiveRequest
from tnllm.engine.scheduler import PrefillChunk, Sequence
from tnllm.engine.states import StateStore

Seq = Sequence[LiveRequest]


class PrefixCache:
    """Engine-side prefix reuse over one ``StateStore`` (or none)."""

    def __init__(self, states: StateStore | None) -> None:
        self.states = states
        #: prompt tokens run through the model / taken from saved states, since start
        self.prefill_tokens = 0
        self.cached_tokens = 0

    def enabled_for(self, seq: Seq) -> bool:
        return self.states is not None and seq.request.state_cache

    def admit(self, seq: Seq) -> None:
        """Start ``seq`` from its longest saved prefix (scheduler admission hook)."""
        if not self.enabled_for(seq) or seq.prefilled:
            return
        assert self.states is not None
        hit = self.states.lookup(seq.prompt_ids, max_len=len(seq.prompt_ids) - 1)
        if hit is None:
            return
        length, key = hit
        state = self.states.get(key)  # held: the entry may spill before the first chunk runs
        if state is None:
            return
        seq.request.restore = state
        seq.prefilled = seq.cached = seq.consumed = length
        self.cached_tokens += length

    def start(self, seq: Seq, pool: list[Tensor], reset: Any) -> None:
        """Before ``seq``'s first chunk: its saved starting state into its slot, else zeros."""
        saved, seq.request.restore = seq.request.restore, None
        if saved is None:
            reset(pool, seq.slot)
            return
        for layer, state in zip(pool, saved, strict=True):
            layer[seq.slot].copy_(state)

    def after_prefill(self, chunks: Iterable[PrefillChunk[LiveRequest]], pool: list[Tensor]) -> None:
        """Save the state at the end of every chunk just run (pinned at a pinned prompt's end)."""
        for ch in chunks:
            self.prefill_tokens += ch.length
            seq = ch.seq
            if not self.enabled_for(seq):
                continue
            assert self.states is not None
            end = ch.start + ch.length
            pin = seq.request.pin if ch.completes_prompt else None
            if pin is not None or end >= self.states.min_tokens:
                self.states.put(seq.prompt_ids[:end], [layer[seq.slot] for layer in pool], pin=pin)

    def finished(self, seq: Seq, pool: list[Tensor]) -> None:
        """Save the final state of a sequence that still holds its slot."""
        if not self.enabled_for(seq) or seq.slot < 0 or not seq.prefill_done or not seq.output_ids:
            return
        assert self.states is not None
        ids = [*seq.prompt_ids, *seq.output_ids][: seq.consumed]
        # (not longer than the prompt: that state was saved after the prefill)
        if len(ids) > len(seq.prompt_ids) and len(ids) >= self.states.min_tokens:
            self.states.put(ids, [layer[seq.slot] for layer in pool])

    def unpin(self, tag: str) -> int:
        """Release the states pinned under ``tag``; how many."""
        return 0 if self.states is None else self.states.unpin(tag)

    def stats(self) -> dict[str, dict[str, int]]:
        """The store's per-tier counters ({} without a store)."""
        return {} if self.states is None else self.states.stats()
