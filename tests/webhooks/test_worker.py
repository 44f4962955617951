"""The real webhook worker (Celery subprocess + schedule pump) against real receivers and Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.webhooks.conftest import REPO, SECRET, Receiver, WorkerProcess, run_job
from tnllm.cli.healthcheck import check_celery
from tnllm.store.sync import JobStore
from tnllm.store.webhooks import SCHEDULE_KEY, WebhookStore

pytestmark = pytest.mark.slow


def wait_state(store: WebhookStore, job_id: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delivery: dict[str, Any] = {}
    while time.monotonic() < deadline:
        log = store.load(job_id)
        if log and log["deliveries"] and (delivery := log["deliveries"][-1])["state"] == state:
            return delivery
        time.sleep(0.05)
    raise AssertionError(f"delivery of {job_id} not {state}: {delivery}")


@pytest.fixture
def store(job_store: JobStore) -> WebhookStore:
    return WebhookStore(job_store.client, job_store.ttl)


def test_worker_delivers_retries_and_gives_up(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    job_store: JobStore,
    store: WebhookStore,
    receiver_factory: Callable[..., Receiver],
    webhook_worker_factory: Callable[..., WorkerProcess],
) -> None:
    """One worker, three receivers at once: 500x3 then 200, always 200, and one that is down."""
    flaky = receiver_factory(script=[500, 500, 500], default=200)
    good = receiver_factory()
    down = receiver_factory()
    down_url = down.url
    down.server.shutdown()
    down.server.server_close()  # nothing listens there any more: connection refused
    worker = webhook_worker_factory(redis_url)
    run_job(job_store, "flaky", flaky.url)
    run_job(job_store, "good", good.url)
    run_job(job_store, "down", down_url)

    delivered = wait_state(store, "good", "delivered")
    hit = good.wait_hits(1)[0]
    assert Webhook(SECRET).verify(hit.body, hit.headers)["data"]["id"] == "good"
    assert delivered["webhook_id"] == hit.headers["webhook-id"]

    delivered = wait_state(store, "flaky", "delivered")
    hits = flaky.wait_hits(4)
    assert len(hits) == 4, "delivered on attempt 4"
    assert {h.headers["webhook-id"] for h in hits} == {delivered["webhook_id"]}
    assert [a["status_code"] for a in delivered["attempts"]] == [500, 500, 500, 200]
    assert [a["error"] for a in delivered["attempts"]] == ["HTTP 500"] * 3 + [None]
    assert len({h.body for h in hits}) == 1  # the same event, byte for byte
    for h in hits:
        Webhook(SECRET).verify(h.body, h.headers)  # each attempt freshly signed and timestamped

    failed = wait_state(store, "down", "failed")
    assert len(failed["attempts"]) == 4  # the first try and the three configured retries
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in failed["attempts"])
    assert store.redis.zcard(SCHEDULE_KEY) == 0
    down_job = job_store.get("down")
    assert down_job is not None and down_job.status.value == "succeeded"  # the job is unaffected
    assert down_job.to_public().model_dump(mode="json")["webhook"]["deliveries"][0]["state"] == "failed"
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    monkeypatch.setenv("TNLLM_REDIS_URL", redis_url)
    assert check_celery("webhooks@%h") is None  # the compose health check finds the node


def test_sigkill_mid_retry_loses_nothing(
    redis_url: str,
    job_store: JobStore,
    store: WebhookStore,
    receiver_factory: Callable[..., Receiver],
    webhook_worker_factory: Callable[..., WorkerProcess],
) -> None:
    """Kill the worker while a retry waits, restart; kill it during an attempt, restart: delivered."""
    receiver = receiver_factory(script=[500, ("hang", 30.0)], default=200)
    env = {"TNLLM_WEBHOOK_RETRY_DELAYS": "1.5,0.1,0.1", "TNLLM_WEBHOOK_TIMEOUT": "2"}
    first = webhook_worker_factory(redis_url, **env)
    run_job(job_store, "job-k", receiver.url)
    receiver.wait_hits(1)  # attempt 1 answered 500: the retry now waits in the schedule
    time.sleep(0.3)
    first.kill()
    assert wait_state(store, "job-k", "pending")["attempts"][0]["status_code"] == 500

    second = webhook_worker_factory(redis_url, **env)
    receiver.wait_hits(2)  # attempt 2 is hanging in the receiver
    second.kill()  # killed mid-attempt: the attempt's lease (timeout + margin) must run out
    third = webhook_worker_factory(redis_url, **env)
    delivered = wait_state(store, "job-k", "delivered", timeout=30)
    hits = receiver.hits
    assert len(hits) == 3 and len({h.headers["webhook-id"] for h in hits}) == 1
    # the killed attempt never reached the log; the ones that finished did
    assert [a["status_code"] for a in delivered["attempts"]] == [500, 200]
    assert third.proc is not None and third.proc.poll() is None


def test_webhook_worker_and_api_side_never_import_torch() -> None:
    code = (
        "import sys; from tnllm.config import Settings; import tnllm.webhooks.process as w;"
        "import tnllm.api.webhooks, tnllm.worker.events;"
        "app = w.make_webhook_celery(Settings(redis_url='redis://127.0.0.1:1/0'));"
        "w.register_webhook_task(app, lambda: None); app.loader.import_default_modules();"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
