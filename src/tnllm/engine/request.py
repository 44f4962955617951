"""The engine-side live state of one request (torch-free at import: the scheduler holds it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import SamplingParams, TokenEvent
from tnllm.text.stop import TextStream

if TYPE_CHECKING:
    import torch

    from tnllm.engine.sampling import TokenDraws

OnToken = Callable[[TokenEvent], None]


@dataclass(eq=False)
class LiveRequest:
    """What the engine keeps for a request while it runs (``Sequence.request``)."""

    params: SamplingParams
    handle: RequestHandle
    on_token: OnToken | None = None
    stream: TextStream | None = None  # incremental text and stop strings (None without a tokenizer)
    generator: TokenDraws | None = None  # the random draws (None for greedy)
    text_parts: list[str] = field(default_factory=list)
    #: a resumed request's tokens of the earlier run (prefilled after the prompt, never re-emitted)
    prior_ids: list[int] = field(default_factory=list)
    prompt_len: int = 0  # the prompt's own length (the sequence's prompt_ids hold prompt + prior_ids)
    state_cache: bool = True  # read and write the engine's state store (EngineRequest.state_cache)
    pin: str | None = None  # pin the prompt's state under this tag (EngineRequest.pin)
    restore: list[torch.Tensor] | None = None  # the saved state the first chunk starts from
