"""`tnllm up --workers N` pins one GPU per worker process."""

from __future__ import annotations

from tnllm.cli.gpus import visible_gpus, worker_env


def test_visible_gpus_from_the_launchers_environment() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_workers_round_robin_over_gpus() -> None:
    base = {"PATH": "/bin"}
    pinned = [worker_env(i, base, "auto", ["2", "3"])["CUDA_VISIBLE_DEVICES"] for i in range(3)]
    assert pinned == ["2", "3", "2"]
    assert worker_env(0, base, "cuda", ["0"])["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(1, base, "auto", [])  # no GPU: nothing to pin
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(1, base, "cpu", ["0", "1"])
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(1, base, "cuda:1", ["0", "1"])  # explicit device kept
    assert base == {"PATH": "/bin"}
