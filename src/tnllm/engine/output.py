"""Output processing: append a sampled token, detokenise, check EOS / length / stop strings, emit.

``OutputProcessor`` turns each sampled id into a ``TokenEvent`` for the request's ``on_token`` and
tells the core loop when a sequence is done; ``result`` builds the final ``EngineResult``.
"""

from __future__ import annotations

import logging
from typing import Any

from tnllm.engine.request import LiveRequest
from tnllm.engine.scheduler import Sequence
from tnllm.engine.types import EngineResult, FinishReason, TokenEvent

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

    def append(self, seq: Seq, tok: int) -> FinishReason | None:
        """Record a sampled token and stream its text; the finish reason when the sequence is done."""
        seq.output_ids.append(tok)
        reason, delta = self._advance(seq.request, tok, len(seq.output_ids) >= seq.max_new_tokens)
        self.emit(seq, delta, [tok])
        return reason

    def replay(self, seq: Seq) -> FinishReason | None:
        """Take back a resumed request's earlier tokens (``prior_ids``) as ``append`` would have
        taken them, text and stop strings included, but without emitting them again (the client
        has them). The finish reason when the earlier run had already ended (it died before
        writing its result)."""
        live = seq.request
        total = len(live.prior_ids) + seq.max_new_tokens
        for i, tok in enumerate(live.prior_ids, 1):
            reason, delta = self._advance(live, tok, i >= total)
            live.text_parts.append(delta)
            if reason is not None:
                return reason
        return None

    def _advance(self, live: LiveRequest, tok: int, at_limit: bool) -> tuple[FinishReason | None, str]:
        """One token through EOS, the length limit, the detokeniser and the stop strings."""
        reason: FinishReason | None = None
        if tok in self.eos_ids and not live.params.ignore_eos:
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
    def emit(seq: Seq, text: str, ids: list[int]) -> None:
        live = seq.request
        live.text_parts.append(text)
        if live.on_token is not None:
            try:
                live.on_token(TokenEvent(seq.request_id, text, ids))
            except Exception:  # a consumer's bug must not stop the batch
                log.exception("on_token callback of %s raised", seq.request_id)

    @staticmethod
    def result(seq: Seq, reason: FinishReason) -> EngineResult:
        """The finished request's result (its text is every emitted delta, in order, after the
        text of a resumed request's earlier tokens)."""
        live = seq.request
        ids = [*live.prior_ids, *seq.output_ids]
        return EngineResult(
            request_id=seq.request_id,
            text="".join(live.text_parts),
            token_ids=ids,
            finish_reason=reason,
            prompt_tokens=live.prompt_len if live.prior_ids else len(seq.prompt_ids),
            completion_tokens=len(ids),
            # of the prompt only (a resumed request's saved state may cover its earlier tokens too)
            cached_tokens=min(seq.cached, live.prompt_len) if live.prior_ids else seq.cached,
        )
