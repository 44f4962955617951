"""Health, readiness, metrics, OpenAPI, the tutorial's POST / and the API's torch-freedom."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx

from tests.api.conftest import FakeWorkerRun, LiveServer, wait_for_queued
from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.store import JobError, JobStatus, JobStore, WorkerInfo
from tnllm.store.server import RedisServer


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_readyz_needs_a_loaded_worker(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["redis"] is True and body["workers_ready"] == 0
    assert any("model loaded" in p for p in body["problems"])
    worker_store.heartbeat_worker(WorkerInfo(id="w1", model="demo", model_loaded=False), ttl=10)
    assert (await client.get("/readyz")).status_code == 503  # loading is not ready
    worker_store.heartbeat_worker(WorkerInfo(id="w1", model="demo", model_loaded=True), ttl=10)
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["workers_ready"] == 1 and r.json()["persistence"] == "aof" and r.json()["warnings"] == []


async def test_readyz_reports_missing_persistence(
    redis_factory: Callable[..., RedisServer], make_settings: Callable[..., Settings]
) -> None:
    server = redis_factory(appendonly=False)
    settings = make_settings(redis_url=server.url)
    store = JobStore.from_settings(settings)
    store.heartbeat_worker(WorkerInfo(id="w", model_loaded=True), ttl=10)
    store.client.close()
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
    ):
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["persistence"] == "none" and "append-only" in r.json()["warnings"][0]


async def test_metrics_exposition(client: httpx.AsyncClient) -> None:
    await client.post("/v1/jobs", json={"prompt": "x"})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "tnllm_api_jobs_submitted_total 1.0" in r.text


async def test_openapi_documents_everything(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/stream", "/v1/jobs/{job_id}/cancel"):
        assert path in spec["paths"]
    for path in ("/", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    create = spec["paths"]["/v1/jobs"]["post"]
    assert {"202", "200", "413", "422", "429", "503"} <= set(create["responses"])
    assert "JobCreate" in spec["components"]["schemas"] and "JobPublic" in spec["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200


def _serve_one(store: JobStore, text: str, status: JobStatus = JobStatus.SUCCEEDED) -> threading.Thread:
    def work() -> None:
        job_id = wait_for_queued(store)
        run = FakeWorkerRun(store, job_id).claim()
        if status is JobStatus.SUCCEEDED:
            run.emit(text)
            run.succeed()
        else:
            store.finish(job_id, run.worker_id, status, error=JobError(type="timeout", message="too slow"))

    thread = threading.Thread(target=work)
    thread.start()
    return thread


async def test_compat_post_root(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    worker = _serve_one(worker_store, "你好！")
    # the tutorial's curl: -H 'Content-Type: application/json' -d '{"prompt": "你好"}'
    r = await client.post(
        "/", content=json.dumps({"prompt": "你好"}), headers={"Content-Type": "application/json"}
    )
    worker.join()
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"response", "status", "time"}
    assert body["response"] == "你好！" and body["status"] == 200
    assert len(body["time"]) == 19 and body["time"][4] == "-" and body["time"][13] == ":"
    jobs = (await client.get("/v1/jobs")).json()["data"]
    assert len(jobs) == 1 and jobs[0]["prompt"] == "你好"  # an ordinary job behind it


def test_compat_with_requests_style_client(live_server: LiveServer, worker_store: JobStore) -> None:
    # the tutorial's `requests.post(url, headers=..., data=json.dumps(...))`, here with plain httpx
    worker = _serve_one(worker_store, "hello")
    r = httpx.post(live_server.url, content=json.dumps({"prompt": "hi"}), timeout=20)  # no Content-Type
    worker.join()
    assert r.status_code == 200 and r.json()["response"] == "hello"


async def test_compat_errors(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    r = await client.post("/", content=b"not json")
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = await client.post("/", json={"text": "hi"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    r = await client.post("/", content=b'{"prompt": "\\ud800"}')
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    worker = _serve_one(worker_store, "", status=JobStatus.FAILED)
    r = await client.post("/", json={"prompt": "hi"})
    worker.join()
    assert r.status_code == 502 and r.json()["error"]["type"] == "timeout"
    assert r.json()["error"]["job_id"]


def test_api_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from tnllm.config import Settings\n"
        "from tnllm.api.main import create_app\n"
        "app = create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "app.openapi()\n"
        "bad = [m for m in ('torch', 'tnllm.model.modeling', 'tnllm.engine.core') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
