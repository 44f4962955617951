"""API metrics: route templates and statuses counted, queue depth and Redis job counters exposed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, HTTPException

from tests.fixtures.metrics import value
from tnllm.api.main import create_app
from tnllm.api.metrics import ApiMetrics, MetricsMiddleware, render
from tnllm.config import Settings
from tnllm.protocol.celery import broker_lists
from tnllm.store import (
    AsyncJobStore,
    GenerationParams,
    JobError,
    JobResult,
    JobStatus,
    JobStore,
    Usage,
    async_redis_client,
)
from tnllm.store import stats as jobstats


def make_app(metrics: ApiMetrics) -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.post("/jobs", status_code=202)
    async def submit() -> dict[str, str]:
        return {"id": "x"}

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, str]:
        if job_id == "missing":
            raise HTTPException(404, "no such job")
        return {"id": job_id}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_requests_counted_by_route_template_and_status() -> None:
    metrics = ApiMetrics()
    app = make_app(metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/v1/jobs")).status_code == 202
        assert (await client.post("/v1/jobs")).status_code == 202
        for job in ("a", "b", "c"):
            assert (await client.get(f"/v1/jobs/{job}")).status_code == 200
        assert (await client.get("/v1/jobs/missing")).status_code == 404
        assert (await client.get("/nope/123")).status_code == 404
        assert (await client.get("/v1/boom")).status_code == 500
    text = metrics.render_local().decode()
    assert value(text, "tnllm_http_requests_total", method="POST", route="/v1/jobs", status="202") == 2
    assert (
        value(text, "tnllm_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") == 3
    )
    assert (
        value(text, "tnllm_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    )
    assert value(text, "tnllm_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert value(text, "tnllm_http_requests_total", method="GET", route="/v1/boom", status="500") == 1
    assert "/v1/jobs/a" not in text  # raw paths never become labels
    assert value(text, "tnllm_job_submit_seconds_count", status="202") == 2
    assert (
        value(text, "tnllm_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}") == 4
    )


async def test_render_reads_queue_depth_and_job_counters(aredis: aioredis.Redis) -> None:
    lists = broker_lists("generate")
    await aredis.rpush(lists[0], "m1", "m2")  # broker step 0 = job priority 9
    await aredis.rpush(lists[6], "m3")
    await aredis.rpush(broker_lists("webhooks")[0], "w")
    async with aredis.pipeline(transaction=True) as pipe:
        jobstats.add_job_started(pipe, 0.02)
        jobstats.add_job_started(pipe, 7.0)
        jobstats.add_job_finished(pipe, "succeeded", 0.3, prompt_tokens=5, completion_tokens=9)
        jobstats.add_job_finished(pipe, "failed", 2.0, reason="worker_lost")
        jobstats.add_job_finished(pipe, "cancelled")  # cancelled while queued: no run time
        jobstats.add_webhook_delivery(pipe, "delivered")
        jobstats.add_webhook_delivery(pipe, "retrying")
        await pipe.execute()
    text = (await render(ApiMetrics(), aredis)).decode()
    assert value(text, "tnllm_broker_messages", queue="generate", priority="9") == 2
    assert value(text, "tnllm_broker_messages", queue="generate", priority="3") == 1
    assert value(text, "tnllm_broker_messages", queue="generate", priority="0") == 0
    assert value(text, "tnllm_broker_messages", queue="webhooks", priority="9") == 1
    assert value(text, "tnllm_jobs_finished_total", state="succeeded") == 1
    assert value(text, "tnllm_jobs_finished_total", state="failed") == 1
    assert value(text, "tnllm_jobs_finished_total", state="cancelled") == 1
    assert value(text, "tnllm_jobs_failed_total", reason="worker_lost") == 1
    assert value(text, "tnllm_tokens_total", kind="completion") == 9
    assert value(text, "tnllm_webhook_deliveries_total", outcome="delivered") == 1
    assert value(text, "tnllm_webhook_deliveries_total", outcome="failed") == 0
    assert value(text, "tnllm_job_duration_seconds_count") == 2
    assert value(text, "tnllm_job_duration_seconds_sum") == pytest.approx(2.3)
    assert value(text, "tnllm_job_duration_seconds_bucket", le="0.25") == 0
    assert value(text, "tnllm_job_duration_seconds_bucket", le="0.5") == 1
    assert value(text, "tnllm_job_duration_seconds_bucket", le="2.5") == 2
    assert value(text, "tnllm_job_duration_seconds_bucket", le="+Inf") == 2
    assert value(text, "tnllm_job_queue_seconds_bucket", le="0.025") == 1
    assert value(text, "tnllm_job_queue_seconds_bucket", le="5.0") == 1
    assert value(text, "tnllm_job_queue_seconds_bucket", le="10.0") == 2
    assert value(text, "tnllm_job_queue_seconds_count") == 2
    assert 0 < await aredis.ttl(jobstats.KEY) <= jobstats.KEY_TTL


async def test_job_store_transitions_move_the_counters(redis_url: str, aredis: aioredis.Redis) -> None:
    """Every terminal path of the real job store counts: finish, queued cancel, reap to worker_lost."""
    settings = Settings(redis_url=redis_url, lease_ttl=0.5, lease_renew_interval=0.1, max_attempts=1)
    store = JobStore.from_settings(settings)
    astore = AsyncJobStore(async_redis_client(redis_url), settings)
    try:
        for job_id, priority in (("ok", 5), ("gone", 0), ("cancel-me", 0), ("waiting", 7), ("lost", 0)):
            assert (
                store.create(
                    job_id=job_id, owner="o", params=GenerationParams(prompt="hi"), priority=priority
                ).kind
                == "created"
            )
        text = (await render(ApiMetrics(), aredis)).decode()
        assert value(text, "tnllm_queue_depth", priority="0") == 3
        assert value(text, "tnllm_queue_depth", priority="5") == 1
        assert value(text, "tnllm_queue_depth", priority="7") == 1

        assert store.claim("ok", "w1").won
        result = JobResult(
            text="out", finish_reason="length", usage=Usage(prompt_tokens=4, completion_tokens=6)
        )
        assert store.finish("ok", "w1", JobStatus.SUCCEEDED, result=result)
        assert store.claim("gone", "w1").won
        assert store.finish("gone", "w1", JobStatus.FAILED, error=JobError(type="timeout", message="slow"))
        assert (await astore.cancel("cancel-me")).kind == "cancelled"
        assert store.claim("lost", "w2").won
        time.sleep(0.7)  # the lease expires
        assert store.reap("lost").action == "failed"

        text = (await render(ApiMetrics(), aredis)).decode()
        assert value(text, "tnllm_queue_depth", priority="0") == 0
        assert value(text, "tnllm_queue_depth", priority="7") == 1
        assert value(text, "tnllm_jobs_finished_total", state="succeeded") == 1
        assert value(text, "tnllm_jobs_finished_total", state="failed") == 2
        assert value(text, "tnllm_jobs_finished_total", state="cancelled") == 1
        assert value(text, "tnllm_jobs_failed_total", reason="timeout") == 1
        assert value(text, "tnllm_jobs_failed_total", reason="worker_lost") == 1
        assert value(text, "tnllm_tokens_total", kind="prompt") == 4
        assert value(text, "tnllm_tokens_total", kind="completion") == 6
        assert value(text, "tnllm_job_queue_seconds_count") == 3  # three claims
        assert value(text, "tnllm_job_duration_seconds_count") == 3  # the queued cancel never ran
        assert value(text, "tnllm_job_duration_seconds_sum") >= 0.5  # "lost" ran until reaped
    finally:
        store.client.close()
        await astore.client.aclose()


def test_jobstats_sync_client_and_bad_state(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(jobstats.KEY)
    pipe = client.pipeline()
    jobstats.add_job_finished(pipe, "succeeded", 4000.0)  # beyond the last bucket
    pipe.execute()
    stats = jobstats.parse(client.hgetall(jobstats.KEY))
    assert stats.duration is not None
    assert stats.duration.buckets[-2][1] == 0 and stats.duration.buckets[-1][1] == 1
    with pytest.raises(ValueError, match="terminal"):
        jobstats.add_job_finished(pipe, "running")
    client.close()


def test_multiprocess_mode_sums_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' counts appear summed on one page."""
    mp = tmp_path / "prom"
    mp.mkdir()
    code = (
        "import sys; from pathlib import Path; from tnllm.api.metrics import ApiMetrics\n"
        "m = ApiMetrics(multiproc_dir=Path(sys.argv[1]))\n"
        "m.observe_request('GET', '/x', 200, 0.01)\n"
        "sys.stdout.write(m.render_local().decode())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    out = ""
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code, str(mp)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
    assert value(out, "tnllm_http_requests_total", method="GET", route="/x", status="200") == 2
    shutil.rmtree(mp)


async def test_make_metrics_follows_the_broker_list_names(redis_url: str, aredis: aioredis.Redis) -> None:
    """The broker lists counted are the ones the workers' Celery app really uses."""
    from tnllm.api.metrics import make_metrics
    from tnllm.protocol.celery import make_celery, send_generate

    settings = Settings(redis_url=redis_url)
    app = make_celery(settings)
    try:
        send_generate(app, "j1", priority=7)
        send_generate(app, "j2", priority=7)
        send_generate(app, "j3", priority=0)
    finally:
        app.close()
    text = (await render(make_metrics(settings), aredis)).decode()
    assert value(text, "tnllm_broker_messages", queue="generate", priority="7") == 2
    assert value(text, "tnllm_broker_messages", queue="generate", priority="0") == 1


async def test_metrics_behind_a_bearer_token(make_settings: Callable[..., Settings]) -> None:
    token = "metrics-token-0123456789"
    app = create_app(make_settings(metrics_token=token, api_keys=["job-key"]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer job-key"}):
                r = await c.get("/metrics", headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
                assert r.json()["error"]["type"] == "unauthorized"
            r = await c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and "tnllm_http_requests_total" in r.text
            # the token opens /metrics only: the job API still wants an API key
            assert (await c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})).status_code == 401
            assert (await c.get("/healthz")).status_code == 200  # liveness stays open
