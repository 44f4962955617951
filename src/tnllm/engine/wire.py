"""The wire format between a worker and its engine process: one JSON object per frame.

Worker → engine: ``start`` (the ``EngineConfig``, first), ``submit`` (a request), ``cancel`` (an id),
``unpin`` (a pin tag of the state store), ``stop``. Engine → worker: ``ready`` (``EngineInfo``) or
``load_failed`` (an error), then
``events`` frames: an ordered list of ``["t", id, text, token_ids]`` (a delta), ``["d", result]``
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
from tnllm.engine.types import EngineRequest, EngineResult, EngineStats

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


def result_to_wire(result: EngineResult) -> dict[str, Any]:
    """A result as JSON-ready data."""
    return dataclasses.asdict(result)


def result_from_wire(data: dict[str, Any]) -> EngineResult:
    """The result ``result_to_wire`` encoded."""
    return EngineResult(**data)


def stats_from_wire(data: dict[str, Any]) -> EngineStats:
    """Engine stats from ``dataclasses.asdict`` data (unknown keys ignored, for mixed versions)."""
    return EngineStats(**{k: v for k, v in data.items() if k in _STATS_FIELDS})


def config_to_wire(config: EngineConfig) -> dict[str, Any]:
    """The engine config, for the engine process to rebuild exactly (``config_from_wire``)."""
    return dict(config.model_dump(mode="json"))


def config_from_wire(data: dict[str, Any]) -> EngineConfig:
    """The engine config ``config_to_wire`` encoded (unknown keys refused)."""
    return EngineConfig(**data)
