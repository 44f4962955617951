"""Request, event and result records of the engine (torch-free, so task adapters can import them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tnllm.errors import RequestRejected

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class SamplingParams:
    """How one request samples and when it stops. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] | list[str] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise RequestRejected naming the first out-of-range field."""
        if self.max_new_tokens < 1:
            raise RequestRejected(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if not self.temperature >= 0:
            raise RequestRejected(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise RequestRejected(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise RequestRejected(f"top_k must be >= 0 (got {self.top_k})")
        if not self.repetition_penalty > 0:
            raise RequestRejected(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestRejected("stop strings must be non-empty strings")


@dataclass
class EngineRequest:
    """One generation request: prompt token ids and sampling parameters."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class TokenEvent:
    """A streamed delta: the new text (may be empty while bytes or a stop prefix are held back)."""

    request_id: str
    text: str
    token_ids: list[int]


@dataclass
class EngineResult:
    """The outcome of one request. ``text`` equals the concatenation of its TokenEvent deltas."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


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
