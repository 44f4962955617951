"""Continuous-batching generation engine (no Celery, HTTP or Redis inside).

The request/result records (``worker.engine.types``) and ``RequestHandle`` are torch-free;
``Engine`` and ``build_engine`` import torch and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from worker.engine.handle import RequestHandle
from worker.engine.types import (
    EngineError,
    EngineLost,
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
    "EngineLost",
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
    if name == "Engine":
        from worker.engine.engine import Engine

        return Engine
    if name == "build_engine":
        from worker.engine.factory import build_engine

        return build_engine
    raise AttributeError(name)
