"""The engine-side live state of one request and of each of its choices (torch-free at import).

A request with ``n`` choices runs as ``n`` scheduler sequences, one slot each; every sequence's
``request`` is its ``LiveRequest`` (one choice), and the choices share one ``RequestState`` (the
handle, the callback, the results gathered until the last choice ends).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tnllm.engine.handle import RequestHandle
from tnllm.engine.scheduler import Sequence
from tnllm.engine.types import (
    EngineChoice,
    EngineRequest,
    EngineResult,
    FinishReason,
    SamplingParams,
    TokenEvent,
)
from tnllm.protocol.outputs import TokenLogprob
from tnllm.text.stop import TextStream

if TYPE_CHECKING:
    import torch


OnToken = Callable[[TokenEvent], None]


@dataclass(eq=False)
class RequestState:
    """What the ``n`` choices of one request share."""

    request_id: str
    params: SamplingParams
    handle: RequestHandle
    on_token: OnToken | None
    seed: int  # the request's seed, or a random one drawn when it started
    prompt_tokens: int
    choices: list[EngineChoice | None] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens taken from a saved state (choice 0's prefill)

    def __post_init__(self) -> None:
        self.choices = [None] * self.params.n

    @property
    def done(self) -> bool:
        """Every choice has ended."""
        return all(c is not None for c in self.choices)

    def result(self) -> EngineResult:
        """The finished request: choice 0 on top, every choice in ``choices``."""
        choices = [c for c in self.choices if c is not None]
        first = choices[0]
        return EngineResult(
            request_id=self.request_id,
            text=first.text,
            token_ids=list(first.token_ids),
            finish_reason=first.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(len(c.token_ids) for c in choices),
            choices=choices,
            cached_tokens=self.cached_tokens,
        )


@dataclass(eq=False)
class LiveRequest:
    """What the engine keeps for one choice while it runs (``Sequence.request``)."""

    shared: RequestState
    index: int = 0
    stream: TextStream | None = None  # incremental text and stop strings (None without a tokenizer)
    text_parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # when the request asked for them
    matcher: Any = None  # the llguidance matcher of a response_format (None: unconstrained)
    #: a resumed request's tokens of the earlier run (prefilled after the prompt, never re-emitted)
    prior_ids: list[int] = field(default_factory=list)
    prompt_len: int = 0  # the prompt's own length (the sequence's prompt_ids hold prompt + prior_ids)
    state_cache: bool = True  # read and write the engine's state store (EngineRequest.state_cache)
    pin: str | None = None  # pin the prompt's state under this tag (EngineRequest.pin)
    restore: list[torch.Tensor] | None = None  # the saved state the first chunk starts from

    @property
    def params(self) -> SamplingParams:
        return self.shared.params

    @property
    def handle(self) -> RequestHandle:
        return self.shared.handle

    @property
    def on_token(self) -> OnToken | None:
        return self.shared.on_token

    def end(self, token_ids: list[int], reason: FinishReason) -> EngineChoice:
        """Record this choice's end in the shared state; returns it."""
        choice = EngineChoice(self.index, "".join(self.text_parts), token_ids, reason, self.logprobs)
        self.shared.choices[self.index] = choice
        return choice


def new_sequences(
    req: EngineRequest, handle: RequestHandle, on_token: OnToken | None, matcher: Any
) -> Sequence[LiveRequest]:
    """Choice 0's sequence, the other choices as its siblings; each choice has its own grammar
    ``matcher`` copy. A resumed request (``resume_ids``, n == 1) prefills its earlier tokens after
    the prompt and samples only the rest, its draws going on at step ``len(resume_ids)``."""
    p = req.params
    seed = p.seed if p.seed is not None else secrets.randbits(63)
    shared = RequestState(req.request_id, p, handle, on_token, seed, len(req.prompt_ids))
    seqs = []
    prompt = [*req.prompt_ids, *req.resume_ids]
    for i in range(p.n):
        live = LiveRequest(shared, i, matcher=matcher.deep_copy() if i and matcher else matcher)
        live.state_cache, live.pin = req.state_cache, req.pin if i == 0 else None
        live.prior_ids, live.prompt_len = list(req.resume_ids), len(req.prompt_ids)
        if p.logprobs:
            live.logprobs = []
        seq = Sequence(req.request_id, list(prompt), req.max_new_tokens - len(req.resume_ids), live)
        seq.priority = req.priority
        seqs.append(seq)
    seqs[0].siblings = seqs[1:]
    seqs[0].cache_points = tuple(c for c in req.cache_points if 0 < c < len(req.prompt_ids))
    return seqs[0]
