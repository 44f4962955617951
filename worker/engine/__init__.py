"""Continuous-batching generation engine (no Celery, HTTP or Redis inside).

The request/result records come from ``worker.engine.types`` (torch-free); ``Engine``,
``RequestHandle`` and ``build_engine`` import torch and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from worker.engine.types import (
    EngineError,
    EngineRequest,
    EngineResult,
    EngineStats,
    RequestRejected,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "Engine",
    "EngineError",
    "EngineRequest",
    "EngineResult",
    "EngineStats",
    "RequestHandle",
    "RequestRejected",
    "SamplingParams",
    "TokenEvent",
    "build_engine",
]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "RequestHandle"):
        from worker.engine import engine

        return getattr(engine, name)
    if name == "build_engine":
        from worker.engine.factory import build_engine

        return build_engine
    raise AttributeError(name)
