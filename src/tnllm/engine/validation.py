"""Checks a request must pass before it takes a slot (torch-free: the engine client runs them too).

Only what depends on the engine is checked here (vocabulary, context, tokenizer, slots, a resolved
token budget, a compilable ``response_format``); the parameters' own ranges are the protocol's
``SamplingParams`` validation."""

from __future__ import annotations

from tnllm.engine.types import EngineRequest
from tnllm.errors import RequestRejected
from tnllm.protocol.formats import constrains, grammar_of


def check_request(
    req: EngineRequest, *, vocab_size: int, max_context: int, has_tokenizer: bool, slots: int
) -> None:
    """Raise RequestRejected naming the first problem of ``req`` for an engine with these limits."""
    p = req.params
    if not req.prompt_ids:
        raise RequestRejected("the prompt is empty (at least one token is needed)")
    bad = [t for t in req.prompt_ids if not 0 <= int(t) < vocab_size]
    if bad:
        raise RequestRejected(f"prompt token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
    max_new = req.max_new_tokens
    total = len(req.prompt_ids) + max_new
    if total > max_context:
        raise RequestRejected(
            f"prompt ({len(req.prompt_ids)} tokens) + max_new_tokens ({max_new}) = {total} "
            f"exceeds the context limit of {max_context} tokens"
        )
    if len(req.resume_ids) > max_new:
        raise RequestRejected(f"resume_ids ({len(req.resume_ids)}) exceed max_new_tokens ({max_new})")
    if req.resume_ids and p.n > 1:
        raise RequestRejected("resume_ids resume one choice: a request with n > 1 restarts from its prompt")
    bad = [t for t in req.resume_ids if not 0 <= int(t) < vocab_size]
    if bad:
        raise RequestRejected(f"resumed token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
    if p.stop and not has_tokenizer:
        raise RequestRejected("stop strings need a tokenizer, and this model has none")
    if p.n > slots:
        raise RequestRejected(f"n: {p.n} choices need {p.n} engine slots, and this engine has {slots}")
    bad = [t for t in p.logit_bias if not 0 <= t < vocab_size]
    if bad:
        raise RequestRejected(f"logit_bias: token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
    fmt = p.response_format
    if constrains(fmt):
        assert fmt is not None and fmt.type != "text"
        if not has_tokenizer:
            raise RequestRejected("response_format: needs a tokenizer, and this model has none")
        try:
            grammar_of(fmt)
        except ValueError as exc:
            raise RequestRejected(f"response_format: {exc}") from None
