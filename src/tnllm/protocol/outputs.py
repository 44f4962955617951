"""What a job produced per choice: text, finish reason and (when asked) per-token log probabilities.

OpenAI's chat ``logprobs.content`` shape plus ``token_id``. ``logprob`` is the natural log of the
token's probability under the model's raw distribution: ``log_softmax`` of the logits before
temperature, top-k/top-p, penalties, ``logit_bias`` and grammar masks (vLLM's ``raw_logprobs``), so it
is the same number whatever the sampling knobs. Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: Why a choice ended: a stop condition (EOS, stop string, grammar complete), the token budget, a cancel.
FinishReason = Literal["stop", "length", "cancelled"]


class TopLogprob(BaseModel):
    """One of the most likely tokens at a step."""

    token: str = Field(description="The token's text ('bytes:\\\\xNN' for a lone byte token).")
    token_id: int
    logprob: float
    bytes: list[int] | None = Field(default=None, description="The token's UTF-8 bytes (None: control).")


class TokenLogprob(TopLogprob):
    """A generated token, its log probability and the ``top_logprobs`` most likely tokens at its step."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Choice(BaseModel):
    """One of the ``n`` generated answers."""

    index: int
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = Field(default=None, description="One entry per token (logprobs).")


class ChoiceDelta(BaseModel):
    """New text of one choice in a stream (the ``token`` SSE event), with its tokens' logprobs."""

    index: int = 0
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
