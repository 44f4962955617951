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
        live = seq.request
        seq.output_ids.append(tok)
        reason: FinishReason | None = None
        if tok in self.eos_ids and not live.params.ignore_eos:
            reason = "stop"
        elif len(seq.output_ids) >= seq.max_new_tokens:
            reason = "length"
        delta = ""
        if live.stream is not None:
            delta = live.stream.push([tok])
            if live.stream.stopped:
                reason = "stop"
            elif reason is not None:
                delta += live.stream.finish()
        self.emit(seq, delta, [tok])
        return reason

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
        """The finished request's result (its text is every emitted delta, in order)."""
        return EngineResult(
            request_id=seq.request_id,
            text="".join(seq.request.text_parts),
            token_ids=list(seq.output_ids),
            finish_reason=reason,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.cached,
        )
