"""The engine process on CUDA: the worker's default path, end to end through EngineClient (CUDA only)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_engine_process_serves_on_cuda(demo_model_dir: Path, tmp_path: Path) -> None:
    from tnllm.config import Settings
    from tnllm.engine.proc_client import ProcessEngineClient
    from tnllm.engine.types import EngineRequest, SamplingParams

    settings = Settings(
        model=str(demo_model_dir), device="cuda", engine_slots=4, max_context=512, data_dir=str(tmp_path)
    )
    client = ProcessEngineClient(settings.engine_config())
    client.start()  # the child loads, tunes and captures its graphs on the GPU
    try:
        assert client.info is not None and client.info.device.startswith("cuda")
        assert client.info.dtype == "bfloat16"
        params = SamplingParams(max_new_tokens=16, ignore_eos=True)
        deltas: dict[str, list[str]] = {}
        handles = [
            client.submit(
                EngineRequest(f"r{i}", client.tokenizer.encode(f"hello {i}"), params),
                on_token=lambda ev: deltas.setdefault(ev.request_id, []).append(ev.text),
            )
            for i in range(6)
        ]
        # (no token-level comparison: how the submissions are batched, which moves bf16 logits,
        # depends on when each crosses the process boundary)
        results = [h.result(timeout=300) for h in handles]
        assert all(r.completion_tokens == 16 and r.finish_reason == "length" for r in results)
        assert all("".join(deltas[r.request_id]) == r.text for r in results)
        deadline = time.monotonic() + 10
        while client.stats().finished_requests < 6 or not client.gpu_memory():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        memory = client.gpu_memory()
        assert memory is not None and memory["allocated"] > 0 and memory["total"] >= memory["free"] > 0
        assert client.stats().device_busy_seconds > 0  # CUDA-event step times from the child
    finally:
        client.stop()
