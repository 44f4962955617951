"""Worker metrics endpoint: served on a free port, model load time and identity exposed."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tnllm.worker.metrics import WorkerMetrics


def test_serves_on_free_port_and_reports_model_load() -> None:
    metrics = WorkerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert port > 0 and metrics.port == port
        metrics.observe_model_load(1.25, model="demo", device="cpu", dtype="float32")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        metrics.close()
    found = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert found["tnllm_model_load_seconds"].value == 1.25
    assert found["tnllm_model_info"].labels == {"model": "demo", "device": "cpu", "dtype": "float32"}
    assert "tnllm_engine_slots" not in found  # no engine yet: no engine numbers
