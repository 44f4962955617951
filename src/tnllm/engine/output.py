"""Output processing: append a sampled token, detokenise, check EOS / length / stop strings /
the grammar, emit.

``OutputProcessor`` turns each sampled id into a ``TokenEvent`` (choice index, text delta, logprob
entry) for the request's ``on_token`` and tells the core loop when a choice is done.
"""

from __future__ import annotations

import logging
from typing import Any

from tnllm.engine.request import LiveRequest
from tnllm.engine.scheduler import Sequence
from tnllm.engine.types import FinishReason, TokenEvent
from tnllm.protocol.outputs import TokenLogprob

log = logging.getLogger(__name__)

Seq = Sequence[LiveRequest]


def eos_ids(model: Any, tokenizer: Any | None) -> frozenset[int]:
    """End-of-sequence ids: the checkpoint config's (an int or a list), else the tokenizer's."""
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_id
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


class OutputProcessor:
    """Per-token host work of the engine thread."""

    def __init__(self, eos: frozenset[int]) -> None:
        self.eos_ids = eos

    def append(self, seq: Seq, tok: int, logprob: TokenLogprob | None = None) -> FinishReason | None:
        """Record a sampled token and stream its text; the finish reason when the choice is done."""
        live = seq.request
        seq.output_ids.append(tok)
        if live.logprobs is not None and logprob is not None:
            live.logprobs.append(logprob)
        reason, delta = self._advance(seq, tok, len(seq.output_ids) >= seq.max_new_tokens)
        self.emit(seq, delta, [tok], [logprob] if logprob is not None else None)
        return reason

    def replay(self, seq: Seq) -> FinishReason | None:
        """Take back a resumed request's earlier tokens (``prior_ids``) as ``append`` would have
        taken them (text, stop strings and the grammar's matcher included) but without emitting
        them again (the client has them). The finish reason when the earlier run had already ended
        (it died before writing its result)."""
        live = seq.request
        total = len(live.prior_ids) + seq.max_new_tokens
        for i, tok in enumerate(live.prior_ids, 1):
            reason, delta = self._advance(seq, tok, i >= total)
            live.text_parts.append(delta)
            if reason is not None:
                return reason
        return None

    def _advance(self, seq: Seq, tok: int, at_limit: bool) -> tuple[FinishReason | None, str]:
        """One token through EOS, the grammar, the length limit, the detokeniser and stop strings."""
        live = seq.request
        reason: FinishReason | None = None
        if tok in self.eos_ids and (not live.params.ignore_eos or live.matcher is not None):
            reason = "stop"  # a grammar's mask allows EOS only where the grammar accepts
        elif live.matcher is not None and _grammar_done(seq, tok):
            reason = "stop"
        elif at_limit:
            reason = "length"
        delta = ""
        if live.stream is not None:
            delta = live.stream.push([tok])
            if live.stream.stopped:
                reason = "stop"
            elif reason is not None:
                delta += live.stream.finish()
        return reason, delta

    @staticmethod
    def emit(seq: Seq, text: str, ids: list[int], logprobs: list[TokenLogprob] | None = None) -> None:
        live = seq.request
        live.text_parts.append(text)
        if live.on_token is not None:
            try:
                live.on_token(TokenEvent(seq.request_id, text, ids, live.index, logprobs))
            except Exception:  # a consumer's bug must not stop the batch
                log.exception("on_token callback of %s raised", seq.request_id)


def _grammar_done(seq: Seq, tok: int) -> bool:
    """Feed the token to the choice's grammar; True once the grammar admits nothing more (the JSON
    is complete), or if it refused the token (the mask forbids that: logged, the choice ends)."""
    matcher = seq.request.matcher
    if not matcher.consume_token(tok):
        log.error("request %s: grammar refused token %d: %s", seq.request_id, tok, matcher.get_error())
        return True
    return bool(matcher.is_stopped())
