"""Worker-side transitions enqueue webhooks: the task hook and the reaper, on real job records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tnllm.config import Settings
from tnllm.store import GenerationParams, JobStatus, JobStore, keys
from tnllm.store.webhooks import SCHEDULE_KEY, WebhookStore
from tnllm.worker.reaper import REAPER_LOCK
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture
def runtime(redis_url: str) -> Iterator[WorkerRuntime]:
    settings = Settings(redis_url=redis_url, lease_ttl=1.0, lease_renew_interval=0.2, max_attempts=1)
    rt = WorkerRuntime(settings, hostname="test@host")
    yield rt
    rt.close()


def test_reaper_failure_enqueues_job_failed(runtime: WorkerRuntime) -> None:
    store: JobStore = runtime.store
    webhook = {"url": "https://hooks.example/x", "events": ["job.failed"]}
    created = store.create(job_id="r2", owner="o", params=GenerationParams(prompt="hi"), webhook=webhook)
    assert created.kind == "created"
    assert store.claim("r2", "dead-worker").won
    store.client.delete(keys.lease("r2"))  # the worker died
    store.client.delete(REAPER_LOCK)
    assert runtime.reaper.reap_once() == [("r2", "failed")]
    record = store.get("r2")
    assert record is not None and record.status is JobStatus.FAILED
    log = WebhookStore(store.client, store.ttl).load("r2")
    assert log is not None
    (delivery,) = log["deliveries"]
    assert delivery["event"] == "job.failed" and delivery["state"] == "pending"
    assert store.client.zrange(SCHEDULE_KEY, 0, -1) == ["r2|0"]
