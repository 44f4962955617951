"""sentinel:// URLs reach the same master from the job store (sync and asyncio) and the Celery broker,
against a real password-protected redis-server and a real redis-sentinel process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tnllm.config import Settings
from tnllm.protocol.celery import make_celery
from tnllm.protocol.tasks import GENERATE_QUEUE, GENERATE_TASK
from tnllm.protocol.urls import SentinelURL, broker_url, parse_sentinel_url
from tnllm.store import AsyncJobStore, GenerationParams, JobStore, async_redis_client
from tnllm.store.server import RedisServer, find_redis_server, free_port

PASSWORD = "s3cret/pw"  # a '/' must survive URL quoting


def test_parse_sentinel_url() -> None:
    url = "sentinel://:p%40ss@h1:26380/2?master_name=prod;sentinel://h2"
    assert parse_sentinel_url(url) == SentinelURL([("h1", 26380), ("h2", 26379)], "prod", 2, None, "p@ss")
    assert parse_sentinel_url("sentinel://h1", "fallback").master == "fallback"
    assert parse_sentinel_url("sentinel://h1").master == "mymaster"
    with pytest.raises(ValueError, match="sentinel://host"):
        parse_sentinel_url("sentinel://h1;redis://h2")
    with pytest.raises(ValueError, match="number"):
        parse_sentinel_url("sentinel://h1/zero")
    # kombu gets the URL without master_name (its transport options carry it)
    assert broker_url(url) == "sentinel://:p%40ss@h1:26380/2;sentinel://h2"
    assert broker_url("rediss://:pw@h:6380/0?ssl_cert_reqs=required").endswith("?ssl_cert_reqs=required")


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    master = RedisServer(tmp_path / "master", password=PASSWORD, die_with_parent=True).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor prod 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass prod {PASSWORD}\n"
    )
    proc = subprocess.Popen(
        [find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if probe.sentinel_get_master_addr_by_name("prod"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not come up"
            time.sleep(0.1)
        yield f"sentinel://:s3cret%2Fpw@127.0.0.1:{port}/0?master_name=prod"
    finally:
        probe.close()
        proc.terminate()
        proc.wait(10)
        master.stop()


async def test_job_store_and_broker_through_sentinel(sentinel_url: str) -> None:
    settings = Settings(redis_url=sentinel_url)
    store = JobStore.from_settings(settings)
    astore = AsyncJobStore(async_redis_client(sentinel_url), settings)
    app = make_celery(settings)
    direct = redis.Redis.from_url(parse_master_url(sentinel_url), decode_responses=True)
    try:
        outcome = store.create(job_id="j1", owner="o", params=GenerationParams(prompt="hi"))
        assert outcome.kind == "created"
        assert direct.hget("tnllm:job:j1", "status") == "queued"  # written on the master itself
        record = await astore.get("j1")
        assert record is not None and record.status.value == "queued"
        assert store.claim("j1", "w").won

        app.send_task(GENERATE_TASK, args=["j1"], queue=GENERATE_QUEUE)  # kombu's sentinel transport
        assert direct.llen(GENERATE_QUEUE) == 1
    finally:
        app.close()
        store.client.close()
        await astore.client.aclose()
        direct.close()


def parse_master_url(sentinel_url: str) -> str:
    """redis:// URL of the master the sentinel names (asked from the sentinel itself)."""
    spec = parse_sentinel_url(sentinel_url)
    host, port = spec.sentinels[0]
    probe = redis.Redis(host=host, port=port, decode_responses=True)
    try:
        addr = probe.sentinel_get_master_addr_by_name(spec.master)
    finally:
        probe.close()
    return f"redis://:s3cret%2Fpw@{addr[0]}:{addr[1]}/0"
