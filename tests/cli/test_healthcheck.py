"""The container health-check helper against real local servers."""

from __future__ import annotations

import socket

from tnllm.cli.healthcheck import check_http, main
from tnllm.worker.metrics import WorkerMetrics


def test_http_check_answers_and_expectations() -> None:
    metrics = WorkerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert check_http(url) is None
        assert check_http(url, expect="tnllm_model_load_seconds") is None
        assert "lacks 'tnllm_engine_slots'" in (check_http(url, expect="tnllm_engine_slots") or "")
        assert main(["http", url]) == 0
        assert main(["http", url, "--expect", "tnllm_engine_slots"]) == 1
    finally:
        metrics.close()


def test_http_check_refused_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    problem = check_http(f"http://127.0.0.1:{port}/healthz", timeout=1)
    assert problem is not None and "ConnectError" in problem
