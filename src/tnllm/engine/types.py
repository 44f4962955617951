"""Request, event and result records of the engine (torch-free, so task adapters can import them).

A request's sampling parameters are the protocol's ``SamplingParams`` (``tnllm.protocol.sampling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tnllm.errors import RequestRejected
from tnllm.protocol.outputs import FinishReason, TokenLogprob
from tnllm.protocol.sampling import SamplingParams, error_message

__all__ = [
    "EngineChoice",
    "EngineRequest",
    "EngineResult",
    "EngineStats",
    "FinishReason",
    "SamplingParams",
    "TokenEvent",
]


@dataclass
class EngineRequest:
    """One generation request: prompt token ids and the protocol's sampling parameters.

    ``from_json`` builds one from JSON data (the wire's), refusing a bad value with
    ``RequestRejected`` worded as the HTTP API words its 422. ``max_new_tokens`` must be resolved
    (an int) before the engine takes the request (``check_request``).

    ``resume_ids``: tokens this request already generated in an earlier run (a crashed or released
    attempt streamed them): the engine prefills prompt + those ids, replays them through the
    detokeniser and stop strings without emitting them again, and goes on from token
    ``len(resume_ids)`` (the seeded draw of token t depends on (seed, t) only), so the result is the
    uninterrupted run's. ``priority`` (0..9) orders admission and drives preemption.
    State reuse (``tnllm.engine.prefix``): ``state_cache`` lets the request start from the longest
    saved state of a prefix of its prompt and save its own; ``cache_points`` are prompt positions
    where a state is saved too (turn boundaries); ``pin`` pins the whole prompt's state under a tag.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    resume_ids: list[int] = field(default_factory=list)
    priority: int = 0
    state_cache: bool = True
    cache_points: tuple[int, ...] = ()
    pin: str | None = None

    @classmethod
    def from_json(
        cls, request_id: str, prompt_ids: list[int], params: Mapping[str, Any], **state: Any
    ) -> EngineRequest:
        """A request whose params come as JSON data; RequestRejected naming the first bad field.
        ``state``: the other fields (state reuse, ``resume_ids``, ``priority``), as JSON data."""
        try:
            sampling = SamplingParams.model_validate(params)
        except ValidationError as exc:
            raise RequestRejected(error_message(exc)) from None
        points = tuple(sorted({int(p) for p in state.get("cache_points", ())}))
        pin = state.get("pin")
        return cls(
            request_id,
            prompt_ids,
            sampling,
            resume_ids=[int(t) for t in state.get("resume_ids") or ()],
            priority=int(state.get("priority", 0)),
            state_cache=bool(state.get("state_cache", True)),
            cache_points=points,
            pin=None if pin is None else str(pin),
        )

    @property
    def max_new_tokens(self) -> int:
        """The resolved token budget; RequestRejected while unresolved."""
        if self.params.max_new_tokens is None:
            raise RequestRejected("max_new_tokens: must be resolved to a number before the engine")
        return self.params.max_new_tokens


@dataclass
class TokenEvent:
    """A streamed delta of choice ``index``: the new text (may be empty while bytes or a stop prefix
    are held back) and, when the request asked for logprobs, one entry per token of ``token_ids``."""

    request_id: str
    text: str
    token_ids: list[int]
    index: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineChoice:
    """One choice of a finished request; ``text`` equals the concatenation of its deltas."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineResult:
    """The outcome of one request: ``text``, ``token_ids`` and ``finish_reason`` are choice 0's,
    ``completion_tokens`` counts every choice's tokens, ``choices`` has the request's ``n``."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    choices: list[EngineChoice] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens taken from a saved state (not prefilled)


@dataclass
class EngineStats:
    """A snapshot of the engine's load, for metrics and worker heartbeats."""

    slots: int
    active: int
    waiting: int
    occupancy: float
    tokens_per_s: float
    step_time_s: float
    steps: int
    generated_tokens: int
    finished_requests: int
    overlapped_steps: int = 0  # decode steps launched from the previous step's device ids
    busy_seconds: float = 0.0  # total time spent in steps (the rest of the wall time: idle)
    device_wait_seconds: float = 0.0  # part of busy_seconds blocked on the device's sampled ids
    device_busy_seconds: float = 0.0  # CUDA: time from each step's first launch to its ids' copy
    preemptions: int = 0  # sequences whose state moved to host memory for a higher-priority one
    resumed_tokens: int = 0  # generated tokens of resumed requests taken back without sampling
    prefills: int = 0  # prompts prefilled (once per request, whatever its n)
    forked_choices: int = 0  # choices started from a copy of a prefilled state (n > 1)
    prefill_tokens: int = 0  # prompt tokens run through the model
    cached_tokens: int = 0  # prompt tokens taken from saved states instead
    state_cache: dict[str, dict[str, int]] = field(default_factory=dict)  # per tier (StateStore.stats)
