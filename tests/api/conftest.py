"""API test fixtures: the real app (lifespan run) on real Redis, an in-process ASGI client, a real
uvicorn server in a thread for streaming, and the sync job store playing the worker's part."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.store import GenerationParams, JobRecord, JobResult, JobStatus, JobStore, Usage
from tnllm.store.server import free_port

API_KEY_A = "key-alpha"
API_KEY_B = "key-bravo"


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test app: the flushed session Redis, a private data dir, small limits."""

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "model": "demo",
            "max_new_tokens_limit": 1024,
            "max_prompt_tokens": 256,
            "max_body_bytes": 64 * 1024,
            "wait_max_seconds": 10.0,
            "compat_timeout": 10.0,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as c:
        yield c


@pytest.fixture
def worker_store(settings: Settings) -> Iterator[JobStore]:
    """The synchronous store, used the way a Celery worker uses it."""
    store = JobStore.from_settings(settings)
    yield store
    store.client.close()


class FakeWorkerRun:
    """Plays one worker run of a job through the real sync store (claim → deltas → finish)."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str = "test-worker") -> None:
        self.store, self.job_id, self.worker_id = store, job_id, worker_id
        self.text = ""

    def claim(self) -> FakeWorkerRun:
        assert self.store.claim(self.job_id, self.worker_id).won
        return self

    def emit(self, *deltas: str) -> list[str]:
        self.text += "".join(deltas)
        return self.store.append(self.job_id, self.worker_id, *deltas)

    def succeed(self, finish_reason: str = "stop") -> None:
        result = JobResult(
            text=self.text,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=5, completion_tokens=len(self.text)),
        )
        assert self.store.finish(self.job_id, self.worker_id, JobStatus.SUCCEEDED, result=result)


def wait_for_queued(store: JobStore, timeout: float = 10.0) -> str:
    """Id of the first queued job, waiting for one to appear (worker-side view)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = store.client.zrange("tnllm:queue", 0, 0)
        if ids:
            return str(ids[0])
        time.sleep(0.02)
    raise AssertionError("no job was queued")


def make_job(store: JobStore, job_id: str, owner: str = "anonymous") -> JobRecord:
    """Store a job directly (no HTTP), for worker-side setups."""
    assert store.create(job_id=job_id, owner=owner, params=GenerationParams(prompt="hi")).kind == "created"
    record = store.get(job_id)
    assert record is not None
    return record


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A real uvicorn server running a fresh app (its own lifespan and event loop)."""
    server = LiveServer(create_app(settings)).start()
    yield server
    server.stop()
