"""``response_format`` through llguidance: a matcher per choice, token masks per step.

``Grammars`` builds llguidance's tokenizer from the model's own sentencepiece vocabulary
(``tnllm.text.vocab``: ``▁`` is a space, ``<0xNN>`` one byte, control pieces special) once, on first
use; ``matcher`` compiles a request's format (RequestRejected naming why it cannot); ``masks``
fills the bitmasks of every constrained row of a step in one parallel call. A matcher allows EOS
only where the grammar accepts, and ``is_stopped`` says the grammar admits nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tnllm.errors import RequestRejected
from tnllm.protocol.formats import constrains, grammar_of
from tnllm.protocol.sampling import SamplingParams
from tnllm.text.vocab import Vocab

_SENTINEL = "<unk>"


class _SentencepieceForLLG:
    """The duck-typed tokenizer ``llguidance.TokenizerWrapper`` reads."""

    def __init__(self, vocab: Vocab, tokenizer: Any, eos: int, n_vocab: int) -> None:
        special = b"\xff"  # llguidance's marker of a special token
        self.tokens = [
            data if data is not None else special + vocab.strings[i].encode()
            for i, data in enumerate(vocab.token_bytes)
        ]
        self.tokens += [b""] * (n_vocab - len(self.tokens))  # ids the model has and the tokenizer lacks
        self.eos_token_id = eos
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(vocab.special)
        self._sp = tokenizer.sp
        self._skip = len(self._sp.encode(_SENTINEL))

    def __call__(self, text: bytes) -> list[int]:
        """The tokens of ``text`` without sentencepiece's dummy word-start ``▁`` (llguidance reads
        bytes literally): encoded after a sentinel whose tokens are then dropped, as the
        non-legacy Hugging Face Llama tokenizer does."""
        ids = self._sp.encode(_SENTINEL + text.decode("utf-8", errors="replace"))
        return [int(i) for i in ids[self._skip :]]


class Grammars:
    """The engine's grammar side: one llguidance tokenizer, matchers, per-step masks."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = sorted(eos_ids)
        self.vocab_size = vocab_size
        self._lltok: Any = None
        self._executor: Any = None
        self._vocab: Vocab | None = None

    @property
    def vocab(self) -> Vocab | None:
        """The tokenizer's byte and string tables (built on first use; None without a tokenizer)."""
        if self._vocab is None and self.tokenizer is not None:
            self._vocab = Vocab.of(self.tokenizer)
        return self._vocab

    def _llg(self) -> Any:
        if self._lltok is None:
            import llguidance

            vocab = self.vocab
            if vocab is None or not self.eos_ids:
                raise RequestRejected("response_format: needs a tokenizer and an end-of-sequence token")
            wrapped = _SentencepieceForLLG(vocab, self.tokenizer, self.eos_ids[0], self.vocab_size)
            self._lltok = llguidance.LLTokenizer(
                llguidance.TokenizerWrapper(wrapped), n_vocab=self.vocab_size, eos_token=self.eos_ids
            )
            self._executor = llguidance.LLExecutor()  # threads: 80 % of the CPUs, at most 32
        return self._lltok

    def matcher(self, params: SamplingParams) -> Any | None:
        """A fresh matcher for the request's format (None when it does not constrain)."""
        fmt = params.response_format
        if not constrains(fmt):
            return None
        assert fmt is not None and fmt.type != "text"
        try:
            grammar = grammar_of(fmt)
        except ValueError as exc:
            raise RequestRejected(f"response_format: {exc}") from None
        import llguidance

        m = llguidance.LLMatcher(self._llg(), grammar, log_level=0)
        if m.is_error():
            raise RequestRejected(f"response_format: the grammar cannot be used: {m.get_error()}")
        return m

    def masks(self, matchers: Sequence[Any]) -> torch.Tensor:
        """``[len(matchers), ceil(V/32)]`` int32 bitmasks of the matchers' next tokens (host)."""
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask_par

        mask = allocate_token_bitmask(len(matchers), self.vocab_size)
        fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], mask)
        return mask
