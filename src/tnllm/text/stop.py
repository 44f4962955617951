"""Streaming text of one sequence: incremental detokenization and stop strings.

Two things are held back from the stream: bytes of an incomplete UTF-8 character (the tokenizer's
IncrementalDecoder holds them until the character completes) and any tail of the text that could be
the start of a stop string. A stop string is therefore never emitted, not even in part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StopStrings:
    """Finds stop strings in released text and decides how much of it is safe to emit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # all text released by the detokenizer
        self.emitted = 0  # chars of ``text`` already emitted
        self.hit = False

    def feed(self, delta: str) -> str:
        """Append text; return what may be emitted now. After a hit, ``hit`` is True and nothing more."""
        if self.hit:
            return ""
        self.text += delta
        if not self.stops:
            return self._emit_to(len(self.text))
        # Nothing emitted can be part of a stop string (held back), so search only the new part,
        # which starts at ``emitted``.
        first = -1
        for s in self.stops:
            at = self.text.find(s, self.emitted)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first >= 0:
            self.hit = True
            return self._emit_to(first)
        return self._emit_to(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation: release everything still held (no stop string completed)."""
        if self.hit:
            return ""
        return self._emit_to(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
        tail_room = len(self.text) - self.emitted
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, tail_room), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _emit_to(self, end: int) -> str:
        out = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out


class TextStream:
    """Detokenizer + stop strings for one sequence; ``push`` returns the delta to stream."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        from tnllm.text.detok import IncrementalDecoder

        self._inc = IncrementalDecoder(tokenizer)
        self._stops = StopStrings(stops)

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared in the text."""
        return self._stops.hit

    def push(self, new_ids: Sequence[int]) -> str:
        """Add generated ids (specials decode to nothing); return the text safe to emit now."""
        return self._stops.feed(self._inc.push(new_ids))

    def finish(self) -> str:
        """At the end of generation: what the decoder and the stop-string check still hold."""
        out = self._stops.feed(self._inc.flush())
        return out if self._stops.hit else out + self._stops.flush()
