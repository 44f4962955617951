"""End to end on real processes: API (uvicorn), GPU worker (demo model), webhook worker, receiver."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.e2e.client import Jobs
from tests.fixtures.services import Stack
from tests.webhooks.conftest import SECRET, Receiver, WorkerProcess

pytestmark = pytest.mark.slow

WEBHOOK_ENV = {
    "TNLLM_WEBHOOK_SECRET": SECRET,
    "TNLLM_WEBHOOK_ALLOWLIST": "127.0.0.1",
    "TNLLM_WEBHOOK_RETRY_DELAYS": "0.3,0.3,0.3",
    "TNLLM_WEBHOOK_TIMEOUT": "2",
}


def test_generated_job_pushes_signed_events(
    redis_url: str,
    stack_factory: Callable[..., Stack],
    receiver_factory: Callable[..., Receiver],
    webhook_worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver = receiver_factory(script=[500], default=200)  # the first delivery is retried
    stack = stack_factory(redis_url, **WEBHOOK_ENV)
    stack.start_worker("w1")
    stack.start_api()
    webhook_worker_factory(redis_url, **WEBHOOK_ENV)
    jobs = Jobs(stack.api_url)
    try:
        hook = {"url": receiver.url, "events": ["job.running", "job.succeeded"]}
        job = jobs.submit("Tell me a story", max_new_tokens=8, webhook=hook)
        assert job["webhook"] == {**hook, "deliveries": []}
        final = jobs.wait(job["id"])
        assert final["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while True:
            shown = jobs.get(job["id"])["webhook"]["deliveries"]
            if len(shown) == 2 and all(d["state"] == "delivered" for d in shown):
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
    finally:
        jobs.close()
    events: dict[str, Any] = {}
    for hit in receiver.hits:
        event = Webhook(SECRET).verify(hit.body, hit.headers)
        events.setdefault(event["type"], []).append((hit.headers["webhook-id"], event))
    assert sorted(events) == ["job.running", "job.succeeded"]
    attempts = sorted(len(v) for v in events.values())
    assert attempts == [1, 2]  # one event got the 500 and was retried with the same webhook-id
    for deliveries in events.values():
        assert len({webhook_id for webhook_id, _ in deliveries}) == 1
    done = events["job.succeeded"][0][1]["data"]
    assert done["status"] == "succeeded" and done["result"] == final["result"]
    assert done["webhook"] == hook  # the job object, without its own delivery log
    assert events["job.running"][0][1]["data"]["status"] == "running"
    assert sorted(len(d["attempts"]) for d in shown) == [1, 2]
