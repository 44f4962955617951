"""End to end: a real GPU-worker process (demo model on CPU), real Flower behind basic auth, real Redis.

Jobs go in the way the API sends them (job record + Celery message); then Flower's HTTP API lists
the worker and the finished tasks (401 without credentials), the worker's /metrics shows the
engine's counters moved, the Redis-backed job counters moved, and the JSON logs carry job ids but
never the prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.fixtures.metrics import value as _value
from tnllm.api.metrics import ApiMetrics, render
from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
from tnllm.config import Settings
from tnllm.protocol.celery import make_celery, send_generate
from tnllm.store import GenerationParams, JobStore
from tnllm.store.server import free_port

pytestmark = pytest.mark.slow

SECRET_PROMPT = "purple elephants guard the vault"
AUTH = ("ops", "flower-pw")


def _wait(what: str, predicate, timeout: float, children: list[Child]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise AssertionError(f"{child.name} exited {child.returncode}:\n{child.log_tail(40)}")
        with contextlib.suppress(httpx.HTTPError, redis.RedisError):
            result = predicate()
            if result:
                return result
        time.sleep(0.2)
    tails = "\n".join(f"--- {c.name}\n{c.log_tail(30)}" for c in children)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture
def stack(redis_url: str, demo_model_dir: Path, tmp_path: Path) -> Iterator[dict]:
    flower_port = free_port()
    env = child_env(
        os.environ,
        {
            "TNLLM_REDIS_URL": redis_url,
            "TNLLM_MODEL": str(demo_model_dir),
            "TNLLM_DATA_DIR": str(tmp_path / "data"),
            "TNLLM_DEVICE": "cpu",
            "TNLLM_ENGINE_SLOTS": "2",
            "TNLLM_LOG_FORMAT": "json",
            "TNLLM_FLOWER_PORT": str(flower_port),
            "TNLLM_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}",
            "TNLLM_METRICS_PORT": "0",
            "OMP_NUM_THREADS": "1",
        },
    )
    flower = Child("flower", tnllm_argv("flower"), env=env, log_path=tmp_path / "flower.log", stop_timeout=10)
    worker = Child(
        "worker",
        tnllm_argv("worker", "--hostname", "gpu0@e2e"),
        env=env,
        log_path=tmp_path / "worker.log",
        stop_timeout=20,
    )
    children = [flower.start(), worker.start()]
    try:
        yield {"env": env, "children": children, "flower": f"http://127.0.0.1:{flower_port}", "tmp": tmp_path}
    finally:
        stop_all(children, 20)


async def test_flower_metrics_and_logs_see_real_jobs(stack: dict, redis_url: str) -> None:
    children, flower = stack["children"], stack["flower"]
    settings = Settings(redis_url=redis_url)
    store = JobStore.from_settings(settings)
    app = make_celery(settings)
    aredis = aioredis.Redis.from_url(redis_url)
    try:
        _wait(
            "Flower", lambda: httpx.get(f"{flower}/healthcheck", timeout=2).status_code == 200, 60, children
        )
        worker = _wait(
            "the worker's model",
            lambda: [w for w in store.workers() if w.hostname == "gpu0@e2e" and w.model_loaded],
            120,
            children,
        )[0]
        assert worker.metrics_port > 0  # published in the heartbeat
        # the container health checks, against the live processes
        check = [sys.executable, "-m", "tnllm.cli.healthcheck"]
        env = stack["env"]
        # (Celery's consumer starts answering pings a moment after the model-loaded heartbeat; Docker
        # retries a health check the same way)
        _wait(
            "a Celery ping answer",
            lambda: (
                subprocess.run([*check, "celery", "--node", "gpu0@e2e"], env=env, timeout=30).returncode == 0
            ),
            60,
            children,
        )
        assert (
            subprocess.run([*check, "celery", "--node", "nobody@e2e", "--timeout", "1"], env=env).returncode
            == 1
        )
        assert subprocess.run([*check, "http", f"{flower}/healthcheck"], env=env, timeout=30).returncode == 0

        jobs = [f"obs-{i}" for i in range(3)]
        for i, job_id in enumerate(jobs):
            params = GenerationParams(prompt=f"{SECRET_PROMPT} #{i}", max_new_tokens=6)
            assert store.create(job_id=job_id, owner="o", params=params, priority=i).kind == "created"
            send_generate(app, job_id, priority=i, prompt_tokens=11)
        _wait(
            "three finished jobs",
            lambda: all((r := store.get(j)) is not None and r.status.value == "succeeded" for j in jobs),
            90,
            children,
        )

        # Flower: basic auth enforced, the worker and the finished tasks listed, no prompt anywhere.
        assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{flower}/api/tasks", auth=("ops", "wrong"), timeout=10).status_code == 401
        workers = _wait(
            "Flower's worker list",
            lambda: httpx.get(f"{flower}/api/workers", auth=AUTH, params={"refresh": "1"}, timeout=10).json(),
            30,
            children,
        )
        assert "gpu0@e2e" in workers

        def finished_tasks() -> dict | None:
            tasks = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
            done = {
                t["args"]: t
                for t in tasks.values()
                if t["name"] == "tnllm.generate" and t["state"] == "SUCCESS"
            }
            return done if len(done) == 3 else None

        done = _wait("Flower's finished tasks", finished_tasks, 30, children)
        for i, job_id in enumerate(jobs):
            task = done[f"job={job_id} prompt_tokens=11 priority={i}"]
            assert task["worker"] == "gpu0@e2e" and task["result"] is not None
        flower_text = json.dumps(httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json())
        assert "elephant" not in flower_text

        # The worker's own metrics moved.
        text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10).text
        assert _value(text, "tnllm_engine_slots") == 2
        assert _value(text, "tnllm_engine_finished_requests_total") >= 3
        assert _value(text, "tnllm_engine_generated_tokens_total") >= 3
        assert _value(text, "tnllm_engine_steps_total") > 0
        assert _value(text, "tnllm_model_load_seconds") > 0
        assert (
            _value(
                text,
                "tnllm_model_info",
                model=str(stack["env"]["TNLLM_MODEL"]),
                device="cpu",
                dtype="float32",
            )
            == 1
        )

        # The cluster-wide job counters (what the API's /metrics shows) moved.
        text = (await render(ApiMetrics(), aredis)).decode()
        assert _value(text, "tnllm_jobs_finished_total", state="succeeded") == 3
        assert _value(text, "tnllm_job_duration_seconds_count") == 3
        assert _value(text, "tnllm_job_queue_seconds_count") == 3
        assert _value(text, "tnllm_tokens_total", kind="completion") >= 3
        assert _value(text, "tnllm_queue_depth", priority="0") == 0
    finally:
        app.close()
        store.client.close()
        await aredis.aclose()

    # JSON logs: one object per line, the job's lines carry its id, the prompt is nowhere.
    stop_all(children, 20)
    lines = (stack["tmp"] / "worker.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # Everything else is Celery's console notice at shutdown (printed, not logged)
    others = [ln for ln in lines if ln.strip() and not ln.startswith("{")]
    assert records and all("shutdown" in ln for ln in others), others
    assert any(r["logger"] == "py.warnings" for r in records)  # warnings are records too (root: Celery warns)
    for job_id in jobs:
        assert any(r.get("job_id") == job_id for r in records), f"no log line carries {job_id}"
    for path in stack["tmp"].glob("*.log"):
        assert "elephant" not in path.read_text(), f"{path.name} leaked the prompt"
