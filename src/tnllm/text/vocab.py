"""Per-token bytes and display strings of a sentencepiece vocabulary (logprobs, grammar masks).

A piece's bytes are what the token adds to the text: ``▁`` (sentencepiece's word-start marker) is a
space, a byte piece ``<0xNN>`` is that one byte, a control or unknown piece has none (``None``).
The display string is the bytes decoded as UTF-8, or OpenAI's ``bytes:\\xNN`` form where they are
not whole characters, or the piece itself for a control token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tnllm.text.tokenizer import Tokenizer

SPACE_MARKER = "\u2581"


@dataclass(frozen=True)
class Vocab:
    """Bytes and display string of every token id ``0 .. size-1``."""

    token_bytes: tuple[bytes | None, ...]
    strings: tuple[str, ...]
    special: frozenset[int]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> Vocab:
        """The tables of ``tokenizer`` (one pass over its pieces)."""
        sp = tokenizer.sp
        raw: list[bytes | None] = []
        strings: list[str] = []
        special = set(tokenizer.special_ids)
        for i in range(tokenizer.vocab_size):
            piece = str(sp.id_to_piece(i))
            if sp.is_byte(i):
                data: bytes | None = bytes([int(piece[3:5], 16)])
            elif sp.is_control(i) or sp.is_unknown(i) or i in tokenizer.special_ids:
                special.add(i)
                data = None
            else:
                data = piece.replace(SPACE_MARKER, " ").encode()
            raw.append(data)
            strings.append(piece if data is None else display(data))
        return cls(tuple(raw), tuple(strings), frozenset(special))

    @property
    def size(self) -> int:
        return len(self.strings)

    def string(self, token_id: int) -> str:
        """The display string of a token ('' outside the vocabulary)."""
        return self.strings[token_id] if 0 <= token_id < len(self.strings) else ""

    def bytes_list(self, token_id: int) -> list[int] | None:
        """The token's bytes as ints (OpenAI's ``bytes``), None for control or unknown ids."""
        data = self.token_bytes[token_id] if 0 <= token_id < len(self.token_bytes) else None
        return None if data is None else list(data)


def display(data: bytes) -> str:
    """``data`` as text, or ``bytes:\\xNN...`` when it is not valid UTF-8 on its own."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)
