"""The wire format between a worker and its engine process: one JSON object per frame.

Worker → engine: ``start`` (the ``EngineConfig``, first), ``submit`` (a request), ``cancel`` (an id),
``unpin`` (a pin tag of the state store), ``stop``. Engine → worker: ``ready`` (``EngineInfo``) or
``load_failed`` (an error), then
``events`` frames: an ordered list of ``["t", id, text, token_ids, choice, logprobs]`` (a delta;
logprobs a list of ``TokenLogprob`` dumps or null), ``["d", result]``
(a request finished) and ``["f", id, message]`` (a request failed), with the engine's stats and
GPU memory every ``STATS_INTERVAL_S``. Order within and across frames is the engine's order, so a
request's deltas always come before its end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tnllm.config import EngineConfig
from tnllm.engine.types import EngineChoice, EngineRequest, EngineResult, EngineStats, TokenEvent
from tnllm.protocol.outputs import TokenLogprob

#: How often the engine process reports its stats (the worker's metrics and heartbeat read them).
STATS_INTERVAL_S = 0.25

_STATS_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineStats))


@dataclass(frozen=True)
class EngineInfo:
    """What the engine process tells the worker once its model is loaded."""

    slots: int
    device: str
    dtype: str
    max_context: int
    vocab_size: int
    has_tokenizer: bool
    model_path: str


def encode(message: dict[str, Any]) -> bytes:
    """One frame."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def decode(frame: bytes) -> dict[str, Any]:
    """The message of one frame; ValueError when it is not a JSON object with an ``op``."""
    message = json.loads(frame)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError(f"not an engine message: {frame[:80]!r}")
    return message


def request_to_wire(req: EngineRequest) -> dict[str, Any]:
    """A request as JSON-ready data: its params are the contract's JSON dump."""
    params = req.params.model_dump(mode="json")
    return {
        "id": req.request_id,
        "prompt_ids": [int(t) for t in req.prompt_ids],
        "params": params,
        "resume_ids": [int(t) for t in req.resume_ids],
        "priority": req.priority,
        "state": {"state_cache": req.state_cache, "cache_points": list(req.cache_points), "pin": req.pin},
    }


def request_from_wire(data: dict[str, Any]) -> EngineRequest:
    """The request ``request_to_wire`` encoded (the params validated again: RequestRejected if bad)."""
    return EngineRequest.from_json(
        data["id"],
        list(data["prompt_ids"]),
        data["params"],
        resume_ids=data.get("resume_ids"),
        priority=data.get("priority", 0),
        **data.get("state", {}),
    )


def _logprobs_to_wire(entries: list[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    return None if entries is None else [e.model_dump(mode="json") for e in entries]


def _logprobs_from_wire(data: list[dict[str, Any]] | None) -> list[TokenLogprob] | None:
    return None if data is None else [TokenLogprob.model_validate(e) for e in data]


def token_to_wire(event: TokenEvent) -> list[Any]:
    """A delta event: ``["t", id, text, token_ids, choice, logprobs]``."""
    logprobs = _logprobs_to_wire(event.logprobs)
    return ["t", event.request_id, event.text, event.token_ids, event.index, logprobs]


def token_from_wire(event: list[Any]) -> TokenEvent:
    """The delta ``token_to_wire`` encoded."""
    return TokenEvent(event[1], event[2], list(event[3]), int(event[4]), _logprobs_from_wire(event[5]))


def result_to_wire(result: EngineResult) -> dict[str, Any]:
    """A result as JSON-ready data."""
    data = dataclasses.asdict(result)
    data["choices"] = [
        {**dataclasses.asdict(c), "logprobs": _logprobs_to_wire(c.logprobs)} for c in result.choices
    ]
    return data


def result_from_wire(data: dict[str, Any]) -> EngineResult:
    """The result ``result_to_wire`` encoded."""
    choices = [
        EngineChoice(**{**c, "logprobs": _logprobs_from_wire(c.get("logprobs"))})
        for c in data.get("choices", [])
    ]
    return EngineResult(**{**data, "choices": choices})


def stats_from_wire(data: dict[str, Any]) -> EngineStats:
    """Engine stats from ``dataclasses.asdict`` data (unknown keys ignored, for mixed versions)."""
    return EngineStats(**{k: v for k, v in data.items() if k in _STATS_FIELDS})


def config_to_wire(config: EngineConfig) -> dict[str, Any]:
    """The engine config, for the engine process to rebuild exactly (``config_from_wire``)."""
    return dict(config.model_dump(mode="json"))


def config_from_wire(data: dict[str, Any]) -> EngineConfig:
    """The engine config ``config_to_wire`` encoded (unknown keys refused)."""
    return EngineConfig(**data)
