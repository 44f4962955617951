"""build_engine(config): the checkpoint folder, tokenizer, slot count and limits come from an EngineConfig."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tnllm.config import EngineConfig, Settings
from tnllm.engine import EngineRequest, SamplingParams, build_engine
from tnllm.engine.backend import ReferenceBackend


def engine_config(**fields: Any) -> EngineConfig:
    return Settings(**fields).engine_config()


def test_build_engine_from_settings(demo_model_dir: Path) -> None:
    derived = build_engine(engine_config(model=str(demo_model_dir), device="cpu", engine_slots=0))
    assert 1 <= derived.slots <= 64 and derived.tokenizer is not None and derived.max_context == 16384
    engine = build_engine(
        engine_config(model=str(demo_model_dir), device="cpu", dtype="auto", engine_slots=3, max_context=64)
    )
    assert engine.slots == 3 and engine.max_context == 64 and engine.device.type == "cpu"
    assert engine.eos_ids == frozenset({2})
    assert isinstance(engine.backend, ReferenceBackend)  # CPU: the factory picks the reference backend
    res = engine.generate([EngineRequest("f", [5, 6, 7], SamplingParams(max_new_tokens=4, ignore_eos=True))])
    assert res[0].completion_tokens == 4


def test_bf16_state_is_refused_on_cpu_and_fp32_is_the_default(demo_model_dir: Path) -> None:
    import pytest
    import torch

    from tnllm.engine.factory import resolve_state_dtype

    engine = build_engine(engine_config(model=str(demo_model_dir), device="cpu", engine_slots=2))
    assert all(layer.dtype == torch.float32 for layer in engine.pool)
    assert resolve_state_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="state_dtype bfloat16 needs a CUDA device"):
        build_engine(
            engine_config(model=str(demo_model_dir), device="cpu", engine_slots=2, state_dtype="bfloat16")
        )


def test_the_backend_is_picked_explicitly_and_nothing_is_cached_on_the_model(
    demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine factory's ``select_backend`` picks (and logs) the backend; the reference model
    neither reroutes itself nor keeps a binding in its ``__dict__``."""
    import torch

    from tnllm.engine import Engine
    from tnllm.engine.backend import select_backend
    from tnllm.model import load_pretrained

    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32).eval()
    before = dict(vars(model))
    with caplog.at_level(logging.INFO, logger="tnllm.engine.backend"):
        backend = select_backend(model)
    assert isinstance(backend, ReferenceBackend) and backend.model is model
    assert "engine backend: reference" in caplog.text
    engine = Engine(model, None, slots=2, backend=backend)
    assert engine.backend is backend
    res = engine.generate([EngineRequest("b", [5, 6, 7], SamplingParams(max_new_tokens=3, ignore_eos=True))])
    assert res[0].completion_tokens == 3
    assert vars(model).keys() == before.keys() and not hasattr(model, "_fast")
