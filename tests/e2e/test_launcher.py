"""`tnllm up --model demo` on this machine: embedded Redis (AOF), worker, webhooks, API, Flower;
URLs printed once /readyz is green; SIGTERM stops every part and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import requests

from tnllm.cli.supervisor import child_env, pid_alive
from tnllm.store.server import free_port

pytestmark = pytest.mark.slow
pytest.importorskip("tnllm.api.main", reason="tnllm.api.main (the HTTP API) is not on this branch yet")


def _children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc), however deep."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        parents, frontier = frontier, set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            child = int(stat.parent.name)
            if int(fields[1]) in parents and child not in found:
                found.add(child)
                frontier.add(child)
    return found


def test_up_with_demo_model_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port, flower_port = free_port(), free_port()
    env = child_env(
        os.environ,
        {"TNLLM_DATA_DIR": str(tmp_path / "data"), "TNLLM_DEVICE": "cpu", "TNLLM_ENGINE_SLOTS": "4",
         "TNLLM_DEFAULT_MAX_NEW_TOKENS": "8", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    env.pop("TNLLM_REDIS_URL", None)
    argv = [sys.executable, "-m", "tnllm.cli.main", "up", "--model", "demo", "--port", str(port),
            "--flower-port", str(flower_port)]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while not any(line.startswith("ready.") for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}" in output and f":{flower_port}" in output
        assert "AOF and password" in output and (tmp_path / "data" / "demo-model" / "config.json").exists()
        # the worker's model preparation is shown between `model:` and `api:`, as it happens
        steps = [line for line in lines if line.startswith("worker-0: ")]
        assert any("loaded" in line for line in steps) and any("engine ready" in line for line in steps)
        assert lines.index(steps[0]) > next(i for i, line in enumerate(lines) if line.startswith("model:"))
        children = _children_of(proc.pid)
        assert len(children) >= 5  # worker, webhook worker, api, flower, redis-server
        answer = requests.post(f"http://127.0.0.1:{port}/", json={"prompt": "Hello"}, timeout=120)
        assert answer.status_code == 200 and answer.json()["status"] == 200
        assert httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if pid_alive(pid)]
        assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
