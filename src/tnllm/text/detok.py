"""Incremental detokenisation: the streamed text of a growing list of generated ids (torch-free)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tnllm.text.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Streaming text for a growing list of generated ids.

    The text is that of decoding the whole id list (sentencepiece pieces can merge, and byte pieces
    only form a character together); each ``push`` returns only the new suffix. Text ending in
    U+FFFD is held back while it may still be an incomplete UTF-8 character; ``flush`` releases it
    at the end. The concatenation of every returned delta equals ``tokenizer.decode(ids)``.

    Only a short window is decoded per push (as text-generation-inference does): the ids emitted
    by the previous delta plus the new ones. Both decodes of a window start with the same piece, so
    sentencepiece's leading-space removal cancels out and the difference is the full-text suffix.
    Ids that ``decode`` drops whatever surrounds them (outside the vocabulary; special tokens when
    skipped) never enter ``ids``: they add no text, and since no text means no delta, a long run of
    them would otherwise widen the window, and the cost of every push, token after token.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start: first id of the previous delta
        self._read_offset = 0  # ids before this are emitted
        self._parts: list[str] = []
        size, specials = tokenizer.vocab_size, tokenizer.special_ids if skip_special_tokens else frozenset()
        self._silent = lambda i: not 0 <= i < size or i in specials

    @property
    def text(self) -> str:
        """Everything returned so far."""
        return "".join(self._parts)

    def push(self, ids: int | Iterable[int]) -> str:
        """Add generated ids; return the text that became final ("" if none)."""
        silent, before = self._silent, len(self.ids)
        if isinstance(ids, int):
            if not silent(ids):
                self.ids.append(ids)
        else:
            self.ids.extend(i for i in map(int, ids) if not silent(i))
        if len(self.ids) == before:  # the window is unchanged, so is its verdict: nothing new
            return ""
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._advance(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """Return whatever was held back (call once the sequence is finished)."""
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text):
            return ""
        return self._advance(new_text[len(prefix_text) :])

    def _window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        window = self.ids[self._prefix_offset :]
        prefix_text = decode(window[: self._read_offset - self._prefix_offset], self.skip_special_tokens)
        return prefix_text, decode(window, self.skip_special_tokens)

    def _advance(self, delta: str) -> str:
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        self._parts.append(delta)
        return delta
