"""build_engine(settings): the checkpoint folder, tokenizer, slot count and limits come from Settings."""

from __future__ import annotations

from pathlib import Path

from tnllm.config import Settings
from tnllm.engine import EngineRequest, SamplingParams, build_engine


def test_build_engine_from_settings(demo_model_dir: Path) -> None:
    derived = build_engine(Settings(model=str(demo_model_dir), device="cpu", engine_slots=0))
    assert 1 <= derived.slots <= 64 and derived.tokenizer is not None and derived.max_context == 16384
    engine = build_engine(
        Settings(model=str(demo_model_dir), device="cpu", dtype="auto", engine_slots=3, max_context=64)
    )
    assert engine.slots == 3 and engine.max_context == 64 and engine.device.type == "cpu"
    assert engine.eos_ids == frozenset({2})
    res = engine.generate([EngineRequest("f", [5, 6, 7], SamplingParams(max_new_tokens=4, ignore_eos=True))])
    assert res[0].completion_tokens == 4


def test_bf16_state_is_refused_on_cpu_and_fp32_is_the_default(demo_model_dir: Path) -> None:
    import pytest
    import torch

    from tnllm.engine.factory import resolve_state_dtype

    engine = build_engine(Settings(model=str(demo_model_dir), device="cpu", engine_slots=2))
    assert all(layer.dtype == torch.float32 for layer in engine.pool)
    assert resolve_state_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="state_dtype bfloat16 needs a CUDA device"):
        build_engine(
            Settings(model=str(demo_model_dir), device="cpu", engine_slots=2, state_dtype="bfloat16")
        )
