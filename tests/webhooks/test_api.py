"""The API side of webhooks (real app, real Redis): submit checks, the job object, cancel, redeliver."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.store.lossy import lossy_proxy
from tests.webhooks.conftest import SECRET, Receiver, drive, make_ctx
from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.store import scripts
from tnllm.store.sync import JobStore


def api_settings(redis_url: str, tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "data_dir": tmp_path / "data",
        "model": "demo",
        "webhook_secret": [SECRET],
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_client(redis_url: str, tmp_path: Any) -> Callable[..., Any]:
    """``async with make_client(**settings) as client``: the real app (lifespan run), ASGI transport."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(api_settings(overrides.pop("redis_url", redis_url), tmp_path, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client

    return make


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("http://[::1]:9000/hook", "::1 is a loopback address"),
        ("http://localhost:9000/hook", "host 'localhost' is a loopback name"),
        ("http://2130706433/hook", "host '2130706433' resolves to 127.0.0.1 is a loopback address"),
        ("http://127.0.0.1:9000/hook", "127.0.0.1 is a loopback address"),
    ],
)
async def test_refused_urls_get_422_naming_the_reason(
    make_client: Callable[..., Any], url: str, reason: str
) -> None:
    async with make_client() as client:
        answer = await client.post("/v1/jobs", json={"prompt": "hi", "webhook": {"url": url}})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert reason in error["message"] and error["field"] == "webhook.url"


@pytest.mark.parametrize(
    ("webhook", "needle"),
    [
        ({"url": "ftp://example.com/x"}, "http or https"),
        ({"url": "https:///x"}, "no host"),
        ({"url": "https://example.com/x", "events": ["job.exploded"]}, "webhook.events[0]"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "secret": "x"}, "secret"),
    ],
)
async def test_invalid_webhook_objects_get_422(
    make_client: Callable[..., Any], webhook: dict[str, Any], needle: str
) -> None:
    async with make_client() as client:
        answer = await client.post("/v1/jobs", json={"prompt": "hi", "webhook": webhook})
    assert answer.status_code == 422, answer.text
    assert needle in answer.text


async def test_webhooks_disabled_without_a_secret(make_client: Callable[..., Any]) -> None:
    async with make_client(webhook_secret=[]) as client:
        answer = await client.post("/v1/jobs", json={"prompt": "hi", "webhook": {"url": "http://10.0.0.1/"}})
    assert answer.status_code == 422
    assert "TNLLM_WEBHOOK_SECRET" in answer.json()["error"]["message"]


async def test_cancel_delivers_and_redeliver_resends(
    make_client: Callable[..., Any],
    redis_url: str,
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory()
    allow = {"webhook_allowlist": ["127.0.0.1"]}
    async with make_client(**allow) as client:
        created = await client.post("/v1/jobs", json={"prompt": "hi", "webhook": {"url": receiver.url}})
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["webhook"] == {
            "url": receiver.url,
            "events": ["job.succeeded", "job.failed", "job.cancelled"],
            "deliveries": [],
        }
        job_id = job["id"]
        early = await client.post(f"/v1/jobs/{job_id}/webhook/redeliver")
        assert early.status_code == 409 and "no webhook event" in early.json()["error"]["message"]

        assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200  # queued -> cancelled
        ctx = make_ctx(redis_url)
        assert await asyncio.to_thread(drive, ctx) == ["delivered"]
        shown = (await client.get(f"/v1/jobs/{job_id}")).json()["webhook"]["deliveries"]
        assert [(d["event"], d["state"]) for d in shown] == [("job.cancelled", "delivered")]

        again = await client.post(f"/v1/jobs/{job_id}/webhook/redeliver")
        assert again.status_code == 202, again.text
        assert [d["state"] for d in again.json()["webhook"]["deliveries"]] == ["delivered", "pending"]
        assert await asyncio.to_thread(drive, ctx) == ["delivered"]

        plain = await client.post("/v1/jobs", json={"prompt": "hi"})
        assert plain.json()["webhook"] is None
        no_hook = await client.post(f"/v1/jobs/{plain.json()['id']}/webhook/redeliver")
        assert no_hook.status_code == 409 and "no webhook" in no_hook.json()["error"]["message"]
        missing = await client.post("/v1/jobs/nope/webhook/redeliver")
        assert missing.status_code == 404

    first, second = receiver.hits
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body
    event = Webhook(SECRET).verify(second.body, second.headers)
    assert event["type"] == "job.cancelled" and event["data"]["status"] == "cancelled"
    assert event["data"]["id"] == job_id and "deliveries" not in event["data"]["webhook"]


async def test_cancel_whose_reply_was_lost_still_cancels_and_notifies(
    make_client: Callable[..., Any],
    redis_url: str,
    job_store: JobStore,
    receiver_factory: Callable[..., Receiver],
) -> None:
    """The CANCEL ran but its answer was lost with the connection: the client's retry must not
    answer 409 (the job is cancelled, by this very call) and job.cancelled must still be sent."""
    receiver = receiver_factory()
    cancel_sha = hashlib.sha1(scripts.ALL["cancel"].encode()).hexdigest()
    job_store.client.script_load(scripts.ALL["cancel"])  # so the first EVALSHA runs the script
    async with (
        lossy_proxy(redis_url) as proxy,
        make_client(redis_url=proxy.url, webhook_allowlist=["127.0.0.1"]) as client,
    ):
        created = await client.post("/v1/jobs", json={"prompt": "hi", "webhook": {"url": receiver.url}})
        job_id = created.json()["id"]
        proxy.lose_reply_to(cancel_sha.encode())
        answer = await client.post(f"/v1/jobs/{job_id}/cancel")
        assert proxy.lost == 1  # the first run's answer really was lost
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled"
        assert [d["event"] for d in answer.json()["webhook"]["deliveries"]] == ["job.cancelled"]
        assert await asyncio.to_thread(drive, make_ctx(redis_url)) == ["delivered"]
    assert len(receiver.hits) == 1
    assert Webhook(SECRET).verify(receiver.hits[0].body, receiver.hits[0].headers)["type"] == "job.cancelled"


async def test_worker_transition_of_an_api_job_is_delivered(
    make_client: Callable[..., Any],
    redis_url: str,
    job_store: JobStore,
    receiver_factory: Callable[..., Receiver],
) -> None:
    """Submit through the API, run it as the GPU worker's task does, get job.succeeded signed."""
    from tnllm.protocol.jobs import JobResult, JobStatus, Usage
    from tnllm.worker.events import notify_transition

    receiver = receiver_factory()
    async with make_client(webhook_allowlist=["127.0.0.1"]) as client:
        body = {"prompt": "hi", "webhook": {"url": receiver.url, "events": ["job.running", "job.succeeded"]}}
        job_id = (await client.post("/v1/jobs", json=body)).json()["id"]
        assert job_store.claim(job_id, "w1").won
        notify_transition(job_store, job_store.get(job_id), "job.running")
        result = JobResult(
            text="hey", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1)
        )
        assert job_store.finish(job_id, "w1", JobStatus.SUCCEEDED, result=result)
        notify_transition(job_store, job_store.get(job_id), "job.succeeded")
        assert await asyncio.to_thread(drive, make_ctx(redis_url)) == ["delivered", "delivered"]
        final = (await client.get(f"/v1/jobs/{job_id}")).json()
    events = [Webhook(SECRET).verify(h.body, h.headers) for h in receiver.hits]
    assert sorted(e["type"] for e in events) == ["job.running", "job.succeeded"]
    done = next(e for e in events if e["type"] == "job.succeeded")
    expected = dict(final)
    expected["webhook"] = {k: v for k, v in final["webhook"].items() if k != "deliveries"}
    assert done["data"] == expected  # the job object as GET /v1/jobs/{id} returns it
    assert [d["state"] for d in final["webhook"]["deliveries"]] == ["delivered", "delivered"]


async def test_api_transition_waits_out_a_redis_outage(redis_url: str, job_store: JobStore) -> None:
    """The API's webhook enqueue retries a transient Redis error as the workers' does: an outage
    longer than the client's own retries, then Redis is back and the event is enqueued."""
    from tnllm.api.webhooks import notify_transition_async
    from tnllm.protocol.jobs import GenerationParams
    from tnllm.store import AsyncJobStore, async_redis_client
    from tnllm.store.webhooks import WebhookStore

    hook = {"url": "https://example.com/hook", "events": ["job.cancelled"]}
    job_store.create(job_id="j1", owner="o", params=GenerationParams(prompt="hi"), webhook=hook)
    assert job_store.cancel("j1").kind == "cancelled"
    record = job_store.get("j1")
    async with lossy_proxy(redis_url) as proxy:
        client = async_redis_client(proxy.url)
        store = AsyncJobStore(client, Settings(redis_url=proxy.url))
        proxy.down = True
        notified = asyncio.create_task(notify_transition_async(store, record, "job.cancelled"))
        await asyncio.sleep(1.5)
        assert proxy.refused > 4 and not notified.done()  # the client gave up, the enqueue did not
        proxy.down = False
        await asyncio.wait_for(notified, 10)
        await client.aclose()
    shown = WebhookStore(job_store.client, job_store.ttl).load("j1")
    assert shown is not None and [d["event"] for d in shown["deliveries"]] == ["job.cancelled"]
