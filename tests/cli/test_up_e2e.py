"""`tnllm up --model demo` as a user runs it: the README's examples work, Flower (auth on) lists the
worker and the finished tasks, and /metrics on the API and on the worker moved with the jobs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_compose import dashboard_metric_names
from tests.fixtures.metrics import value as _value
from tnllm.cli.supervisor import Child, child_env, tnllm_argv
from tnllm.store import JobStore, redis_client
from tnllm.store.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("ops", "up-e2e-pw")
README_URL = "http://127.0.0.1:8000"


def _names(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def _readme_block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.search(rf"```{lang}\n(.*?)```", text[start:], flags=re.S)
    assert match, f"no {lang} block after {after!r} in README.md"
    return match.group(1)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict]:
    api_port, flower_port = free_port(), free_port()
    env = child_env(
        os.environ,
        {
            "TNLLM_DATA_DIR": str(tmp_path / "data"),
            "TNLLM_DEVICE": "cpu",
            "TNLLM_ENGINE_SLOTS": "4",
            "TNLLM_LOG_FORMAT": "json",
            "TNLLM_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}",
            "TNLLM_DEFAULT_MAX_NEW_TOKENS": "8",
            "OMP_NUM_THREADS": "1",
        },
    )
    env.pop("TNLLM_REDIS_URL", None)  # the embedded Redis
    child = Child(
        "up",
        tnllm_argv("up", "--model", "demo", "--port", str(api_port), "--flower-port", str(flower_port)),
        env=env,
        log_path=tmp_path / "up.log",
        stop_timeout=90,
    ).start()
    try:
        deadline = time.monotonic() + 240
        while "ready." not in child.log_tail(50):
            assert child.alive, f"tnllm up exited {child.returncode}:\n{child.log_tail(60)}"
            assert time.monotonic() < deadline, f"tnllm up not ready:\n{child.log_tail(60)}"
            time.sleep(0.5)
        # the URL is printed without its password, which lives in a private file of the data dir
        printed = re.search(r"redis:\s+redis://:\*\*\*@([\d.]+):(\d+)/0", child.log_tail(50))
        assert printed, child.log_tail(50)
        password = (tmp_path / "data" / "redis" / "password").read_text().strip()
        yield {
            "api": f"http://127.0.0.1:{api_port}",
            "flower": f"http://127.0.0.1:{flower_port}",
            "redis_url": f"redis://:{password}@{printed.group(1)}:{printed.group(2)}/0",
            "redis_address": (printed.group(1), int(printed.group(2))),
            "redis_password": password,
            "up_log": tmp_path / "up.log",
            "env": env,
            "logs": tmp_path / "data" / "logs",
        }
    finally:
        child.stop()
    assert child.returncode == 0, child.log_tail(40)
    assert "stopped." in child.log_tail(5)


def _run_python(code: str, api: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, api)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_tnllm_up_demo_end_to_end(up: dict) -> None:
    api, flower = up["api"], up["flower"]

    # The README's Python client example (submit, wait, stream, list, cancel) and the tutorial's code.
    printed = _run_python(_readme_block("In Python, `tnllm.client`", "python"), api, up["env"]).splitlines()
    assert printed[0].split()[1:] in (["queued", "0"], ["running", "None"]), printed
    assert printed[1].startswith("succeeded length prompt_tokens=97 completion_tokens=64"), printed
    assert printed[-1] == "job already succeeded succeeded", printed
    tutorial = _readme_block("### The tutorial's endpoint", "python")
    assert _run_python(tutorial, api, up["env"]).strip()  # prints the model's answer
    if shutil.which("curl"):
        submit = _readme_block("Submit a job", "bash").split("\n#")[0]
        out = subprocess.run(
            ["bash", "-c", submit.replace(README_URL, api)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        job = json.loads(out.stdout)
        assert job["object"] == "job" and job["status"] in ("queued", "running", "succeeded")
        keep = _readme_block("kept from the answer", "bash")
        kept = subprocess.run(
            ["bash", "-c", keep.replace(README_URL, api) + 'echo "$JOB_ID"'],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert re.fullmatch(r"[\w-]{20,}\n", kept.stdout), kept
        with httpx.Client(timeout=60) as client:
            done = client.get(f"{api}/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded"

    # Flower: auth on every page, the worker and the finished tasks listed with readable arguments.
    for page in ("/", "/broker", "/metrics", "/tasks", "/api/workers", "/api/tasks"):
        assert httpx.get(f"{flower}{page}", timeout=10).status_code == 401, page
    with httpx.Client(auth=AUTH, timeout=15) as client:
        workers = client.get(f"{flower}/api/workers", params={"refresh": "1"}).json()
        assert any(name.startswith("gpu0@") for name in workers), workers
        tasks: dict = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = client.get(f"{flower}/api/tasks").json()
            done_tasks = [
                t for t in tasks.values() if t["name"] == "tnllm.generate" and t["state"] == "SUCCESS"
            ]
            if len(done_tasks) >= 3:
                break
            time.sleep(0.5)
        assert len(done_tasks) >= 3, tasks
        assert all(re.fullmatch(r"job=\S+ prompt_tokens=\d+ priority=\d", t["args"]) for t in done_tasks)
        assert all(t["worker"].startswith("gpu0@") for t in done_tasks)

    # /metrics on the API: HTTP, submit latency, jobs by state, histograms; then the worker's.
    with httpx.Client(timeout=15) as client:
        text = client.get(f"{api}/metrics").text
        assert _value(text, "tnllm_http_requests_total", method="POST", route="/v1/jobs", status="202") >= 2
        assert _value(text, "tnllm_http_requests_total", method="POST", route="/", status="200") == 1
        assert _value(text, "tnllm_job_submit_seconds_count", status="202") >= 2
        assert _value(text, "tnllm_jobs_finished_total", state="succeeded") >= 3
        assert _value(text, "tnllm_job_duration_seconds_count") >= 3
        assert _value(text, "tnllm_job_queue_seconds_count") >= 3
        assert _value(text, "tnllm_tokens_total", kind="prompt") > 0
        assert _value(text, "tnllm_api_jobs_submitted_total") >= 3
        store = JobStore(redis_client(up["redis_url"]), _settings(up))
        try:
            (worker,) = [w for w in store.workers() if w.model_loaded]
        finally:
            store.client.close()
        wtext = client.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    assert _value(wtext, "tnllm_engine_finished_requests_total") >= 3
    assert _value(wtext, "tnllm_engine_slots") == 4
    # Every series the Grafana dashboard charts exists (GPU memory only on CUDA).
    exposed = {re.sub(r"_total$", "", n) for n in _names(text) | _names(wtext)}
    assert dashboard_metric_names() - {"tnllm_gpu_memory_bytes"} <= exposed

    # The embedded Redis is locked: its password file is private, a client without it is refused,
    # and no log of `up` or of its children (api, worker, webhooks, Flower) shows the password.
    password_file = up["logs"].parent / "redis" / "password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    with socket.create_connection(up["redis_address"], timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        assert sock.recv(200).startswith(b"-NOAUTH")
    for log in [up["up_log"], *up["logs"].glob("*.log")]:
        assert up["redis_password"] not in log.read_text(errors="replace"), log

    # JSON logs of every child; the worker's carry job ids.
    worker_lines = (up["logs"] / "worker-0.log").read_text().splitlines()
    records = [json.loads(line) for line in worker_lines if line.startswith("{")]
    assert any(r.get("job_id") for r in records)
    with contextlib.suppress(FileNotFoundError):
        for line in (up["logs"] / "api.log").read_text().splitlines():
            if line.strip():
                json.loads(line)  # every API line is one JSON object


def _settings(up: dict):  # type: ignore[no-untyped-def]
    from tnllm.config import Settings

    return Settings(redis_url=up["redis_url"])
