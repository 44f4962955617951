"""Continuous-batching generation engine (no Celery, HTTP or Redis inside).

The request/result records (``tnllm.engine.types``) and ``RequestHandle`` are torch-free;
``Engine`` and ``build_engine`` import torch and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineResult, EngineStats, SamplingParams, TokenEvent
from tnllm.errors import EngineError, EngineLost, RequestRejected

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
        from tnllm.engine.core import Engine

        return Engine
    if name == "build_engine":
        from tnllm.engine.factory import build_engine

        return build_engine
    raise AttributeError(name)
