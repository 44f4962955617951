"""Flower shows how each job ended: a real worker (demo model on CPU) and a real Flower on one Redis;
jobs go in the way the API sends them (record + Celery message), and Flower's own HTTP API
(``/api/tasks``) is read for the state of each job's task.

succeeded → SUCCESS; failed → FAILURE naming the error type; cancelled while running, and
cancelled while still queued → REVOKED. The job records stay what the worker wrote.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
from tnllm.config import Settings
from tnllm.protocol.celery import make_celery, send_generate
from tnllm.store import GenerationParams, JobStatus, JobStore
from tnllm.store.server import RedisServer, free_port
from tnllm.worker.job_runner import JobOutcome
from tnllm.worker.tasks import _CANCELLED, _ELSEWHERE, _FAILED

pytestmark = pytest.mark.slow
AUTH = ("ops", "flower-pw")  # Flower's HTTP API answers only with auth


def _wait(what: str, predicate: Callable[[], Any], children: list[Child], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise AssertionError(f"{child.name} exited {child.returncode}:\n{child.log_tail(40)}")
        with contextlib.suppress(httpx.HTTPError):
            result = predicate()
            if result:
                return result
        time.sleep(0.2)
    tails = "\n".join(f"--- {c.name}\n{c.log_tail(30)}" for c in children)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("flower-states")
    flower_port = free_port()
    env = child_env(
        os.environ,
        {
            "TNLLM_REDIS_URL": module_redis.url,
            "TNLLM_MODEL": str(demo_model_dir),
            "TNLLM_DATA_DIR": str(tmp / "data"),
            "TNLLM_DEVICE": "cpu",
            "TNLLM_ENGINE_SLOTS": "2",
            "TNLLM_MAX_CONTEXT": "2048",  # a stored job asking more is refused by the engine
            "TNLLM_FLOWER_PORT": str(flower_port),
            "TNLLM_FLOWER_BASIC_AUTH": ":".join(AUTH),
            "OMP_NUM_THREADS": "1",
        },
    )
    children = [
        Child("flower", tnllm_argv("flower"), env=env, log_path=tmp / "flower.log", stop_timeout=10),
        Child("worker", tnllm_argv("worker", "--hostname", "w@flower"), env=env, log_path=tmp / "worker.log"),
    ]
    for child in children:
        child.start()
    settings = Settings(redis_url=module_redis.url)
    store = JobStore.from_settings(settings)
    app = make_celery(settings)
    try:
        flower = f"http://127.0.0.1:{flower_port}"
        _wait("Flower", lambda: httpx.get(f"{flower}/healthcheck", timeout=2).status_code == 200, children)
        _wait("the worker's model", lambda: any(w.model_loaded for w in store.workers()), children, 120)
        yield {"store": store, "app": app, "flower": flower, "children": children}
    finally:
        stop_all(children, 20)
        app.close()
        store.client.close()


def _submit(stack: dict[str, Any], job_id: str, *, send: bool = True, **params: Any) -> None:
    store: JobStore = stack["store"]
    created = store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="Hello", **params))
    assert created.kind == "created"
    if send:
        send_generate(stack["app"], job_id, priority=0)


def _flower_task(stack: dict[str, Any], job_id: str, state: str) -> dict[str, Any]:
    """Flower's view of the job's task once it shows ``state``."""

    def look() -> dict[str, Any] | None:
        tasks = httpx.get(f"{stack['flower']}/api/tasks", auth=AUTH, timeout=10).json()
        task = tasks.get(job_id)
        return task if task and task["state"] == state else None

    return dict(_wait(f"Flower to show {job_id} {state}", look, stack["children"], 30))


def _record_status(stack: dict[str, Any], job_id: str) -> JobStatus | None:
    record = stack["store"].get(job_id)
    return record.status if record else None


def test_outcomes_are_classified() -> None:
    """Every outcome a delivery can have is a known value; the others end SUCCESS."""
    values = {o.value for o in JobOutcome}
    classified = _CANCELLED | _ELSEWHERE | _FAILED
    assert classified <= values
    assert values - classified == {"succeeded", "missing", "skipped:succeeded", "skipped:unknown"}


def test_flower_shows_each_outcome(stack: dict[str, Any]) -> None:
    store: JobStore = stack["store"]
    _submit(stack, "fl-ok", max_new_tokens=8)
    _submit(stack, "fl-bad", max_new_tokens=4000)  # over the engine's context: refused
    _submit(stack, "fl-long", max_new_tokens=1900, ignore_eos=True)
    _submit(stack, "fl-queued", send=False, max_new_tokens=8)
    assert store.cancel("fl-queued").kind == "cancelled"  # cancelled before its message went out
    send_generate(stack["app"], "fl-queued", priority=0)

    ok = _flower_task(stack, "fl-ok", "SUCCESS")
    assert ok["result"] == "'succeeded'" and ok["worker"] == "w@flower"
    assert _record_status(stack, "fl-ok") is JobStatus.SUCCEEDED

    bad = _flower_task(stack, "fl-bad", "FAILURE")
    record = store.get("fl-bad")
    assert record is not None and record.status is JobStatus.FAILED and record.error is not None
    assert record.error.type == "invalid_request"
    assert bad["exception"].startswith("JobFailed('invalid_request: ")

    _wait("fl-long running", lambda: _record_status(stack, "fl-long") is JobStatus.RUNNING, stack["children"])
    assert store.cancel("fl-long").kind == "requested"
    _flower_task(stack, "fl-long", "REVOKED")
    record = store.get("fl-long")
    assert record is not None and record.status is JobStatus.CANCELLED and record.result is not None
    assert record.result.finish_reason == "cancelled" and record.attempt == 1

    _flower_task(stack, "fl-queued", "REVOKED")
    record = store.get("fl-queued")
    assert record is not None and record.status is JobStatus.CANCELLED and record.attempt == 0
