"""Submit, read, long-poll, cancel, list and idempotency through the HTTP API on real Redis; the
worker's part is played by the real synchronous job store."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.api.conftest import API_KEY_A, API_KEY_B, FakeWorkerRun
from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.protocol.celery import broker_lists
from tnllm.protocol.tasks import GENERATE_QUEUE
from tnllm.store import JobResult, JobStatus, JobStore, Usage

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def submit(client: httpx.AsyncClient, **body: object) -> dict:
    body.setdefault("prompt", "Hello there")
    r = await client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


async def test_submit_then_get(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/jobs",
        json={"prompt": "Hi", "max_new_tokens": 7, "temperature": 0.5, "stop": ["\n"], "metadata": {"a": 1}},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert len(job["id"]) >= 22  # unguessable: 18 random bytes
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["max_new_tokens"] == 7 and job["temperature"] == 0.5 and job["stop"] == ["\n"]
    assert job["metadata"] == {"a": 1} and job["prompt"] == "Hi" and job["messages"] is None
    assert RFC3339.match(job["created_at"]) and job["started_at"] is None and job["result"] is None
    got = await client.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json() == job


async def test_defaults_and_messages(client: httpx.AsyncClient, settings: Settings) -> None:
    job = await submit(client, prompt=None, messages=[{"role": "user", "content": "hey"}])
    assert job["messages"] == [{"role": "user", "content": "hey"}] and job["prompt"] is None
    assert job["max_new_tokens"] == settings.default_max_new_tokens
    assert job["priority"] == 0 and job["top_p"] == 1.0 and job["seed"] is None


async def test_worker_lifecycle_visible(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    job = await submit(client)
    run = FakeWorkerRun(worker_store, job["id"]).claim()
    running = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert running["status"] == "running" and running["queue_position"] is None
    assert RFC3339.match(running["started_at"]) and running["attempts"] == 1
    run.emit("Hel", "lo")
    run.succeed()
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and RFC3339.match(done["finished_at"])
    assert done["result"] == {
        "text": "Hello",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "cached_tokens": 0},
        "choices": [],  # this fake worker writes none; the real one writes one per choice
    }
    assert done["error"] is None


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    for r in (
        await client.get("/v1/jobs/doesnotexist"),
        await client.get("/v1/jobs/doesnotexist?wait=1"),
        await client.post("/v1/jobs/doesnotexist/cancel"),
        await client.get("/v1/jobs/doesnotexist/stream"),
    ):
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found"


async def test_wait_returns_when_job_finishes(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    job = await submit(client)

    def finish_later() -> None:
        time.sleep(0.4)
        run = FakeWorkerRun(worker_store, job["id"]).claim()
        run.emit("ok")
        run.succeed()

    thread = threading.Thread(target=finish_later)
    start = time.monotonic()
    thread.start()
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 8})
    elapsed = time.monotonic() - start
    thread.join()
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert r.json()["result"]["text"] == "ok"
    assert 0.3 < elapsed < 4  # woken by the notification, not by the 8 s timeout


async def test_wait_reads_the_record_twice(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    """A ``?wait=`` GET of a running job reads the record once before it waits (that read is also
    the ownership check) and once when woken: two HGETALLs (INFO commandstats), no more."""
    job = await submit(client)
    assert worker_store.claim(job["id"], "w").won

    def hgetalls() -> int:
        return int(worker_store.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))

    def finish_later() -> None:
        time.sleep(0.3)
        result = JobResult(text="ok", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))
        assert worker_store.finish(job["id"], "w", JobStatus.SUCCEEDED, result=result)

    before = hgetalls()
    thread = threading.Thread(target=finish_later)
    thread.start()
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 8})
    thread.join()
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert hgetalls() - before == 2


async def test_wait_times_out_with_current_state(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    start = time.monotonic()
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.5})
    assert 0.4 < time.monotonic() - start < 3
    assert r.json()["status"] == "queued"
    too_long = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 61})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "wait"


async def test_cancel_queued_running_terminal(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    queued = await submit(client)
    r = await client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["cancel"] == "cancelled"  # it was queued: it never runs
    assert not worker_store.claim(queued["id"], "w").won  # the queued job never starts

    running = await submit(client)
    run = FakeWorkerRun(worker_store, running["id"]).claim()
    run.emit("part")
    r = await client.post(f"/v1/jobs/{running['id']}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert r.json()["cancel"] == "stopping"  # it was running: its worker stops it
    assert worker_store.renew_lease(running["id"], run.worker_id).cancel_requested
    assert (await client.post(f"/v1/jobs/{running['id']}/cancel")).status_code == 202  # idempotent

    again = await client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["status"] == "cancelled"
    assert again.json()["error"]["type"] == "job_terminal"
    assert again.json()["error"]["cancel"] == "already_finished"


async def test_cancel_running_keeps_partial_text(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    from tnllm.store import JobResult

    job = await submit(client)
    run = FakeWorkerRun(worker_store, job["id"]).claim()
    run.emit("par", "tial")
    assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
    assert worker_store.finish(
        job["id"],
        run.worker_id,
        JobStatus.CANCELLED,
        result=JobResult(text=run.text, finish_reason="cancelled"),
    )
    final = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert final["status"] == "cancelled"
    assert final["result"]["text"] == "partial" and final["result"]["finish_reason"] == "cancelled"
    r = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["status"] == "cancelled"


async def test_list_with_cursor_and_status(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    ids = [(await submit(client, prompt=f"p{i}"))["id"] for i in range(5)]
    FakeWorkerRun(worker_store, ids[1]).claim()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params)).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    running = (await client.get("/v1/jobs", params={"status": "running"})).json()
    assert [j["id"] for j in running["data"]] == [ids[1]] and running["next_cursor"] is None
    queued = (await client.get("/v1/jobs", params={"status": "queued"})).json()
    assert [j["queue_position"] for j in queued["data"]] == [3, 2, 1, 0]
    bad = await client.get("/v1/jobs", params={"cursor": "%%%"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"
    bad = await client.get("/v1/jobs", params={"status": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


async def test_idempotency_concurrent_same_key(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    body = {"prompt": "once", "max_new_tokens": 3}
    headers = {"Idempotency-Key": "order-42"}
    answers = await asyncio.gather(*(client.post("/v1/jobs", json=body, headers=headers) for _ in range(50)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 49 + [202]
    assert len({r.json()["id"] for r in answers}) == 1
    replays = [r for r in answers if r.status_code == 200]
    assert all(r.headers["idempotent-replayed"] == "true" for r in replays)
    assert all(r.headers["location"] == f"/v1/jobs/{answers[0].json()['id']}" for r in replays)
    assert len((await client.get("/v1/jobs")).json()["data"]) == 1
    assert _broker_messages(worker_store) == 1  # one Celery message, not fifty
    # formatting does not matter, the content does
    same = await client.post(
        "/v1/jobs",
        content=b'{ "max_new_tokens": 3,  "prompt": "once" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert same.status_code == 200, same.text
    other = await client.post("/v1/jobs", json={**body, "prompt": "twice"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["field"] == "Idempotency-Key"
    bad = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "Idempotency-Key"


async def test_idempotency_scoped_per_api_key(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(api_keys=[API_KEY_A, API_KEY_B]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            h = {"Idempotency-Key": "shared"}
            a = await c.post("/v1/jobs", json={"prompt": "x"}, headers={**h, **_bearer(API_KEY_A)})
            b = await c.post("/v1/jobs", json={"prompt": "x"}, headers={**h, **_bearer(API_KEY_B)})
            assert a.status_code == b.status_code == 202
            assert a.json()["id"] != b.json()["id"]


async def test_queue_limit_429(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(max_queued=3))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(3):
                assert (await c.post("/v1/jobs", json={"prompt": "x"})).status_code == 202
            r = await c.post("/v1/jobs", json={"prompt": "x"})
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) > 0
            assert r.json()["error"]["type"] == "queue_full"
            assert len((await c.get("/v1/jobs")).json()["data"]) == 3  # nothing stored for the refusal


async def test_priority_reaches_the_broker(
    client: httpx.AsyncClient, worker_store: JobStore, settings: Settings
) -> None:
    await submit(client, priority=9)
    await submit(client, priority=0)
    await submit(client, priority=0)
    r = worker_store.client
    lists = broker_lists(GENERATE_QUEUE)  # the workers' configuration: they pop these lists
    # kombu's Redis transport: one list per priority step, lower number popped first
    assert r.llen(lists[0]) == 1  # job priority 9 -> broker priority 0
    assert r.llen(lists[9]) == 2  # job priority 0 -> broker priority 9
    high, *_ = (await client.get("/v1/jobs", params={"status": "queued"})).json()["data"][::-1]
    assert high["priority"] == 9 and high["queue_position"] == 0


async def test_auth_isolation(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(api_keys=[API_KEY_A, API_KEY_B]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            none = await c.post("/v1/jobs", json={"prompt": "x"})
            assert none.status_code == 401 and none.json()["error"]["type"] == "unauthorized"
            assert none.headers["www-authenticate"] == "Bearer"
            wrong = await c.get("/v1/jobs", headers=_bearer("nope"))
            assert wrong.status_code == 401
            job = (await c.post("/v1/jobs", json={"prompt": "x"}, headers=_bearer(API_KEY_A))).json()
            mine = await c.get(f"/v1/jobs/{job['id']}", headers=_bearer(API_KEY_A))
            assert mine.status_code == 200
            for r in (
                await c.get(f"/v1/jobs/{job['id']}", headers=_bearer(API_KEY_B)),
                await c.post(f"/v1/jobs/{job['id']}/cancel", headers=_bearer(API_KEY_B)),
                await c.get(f"/v1/jobs/{job['id']}/stream", headers=_bearer(API_KEY_B)),
            ):
                assert r.status_code == 404
            assert (await c.get("/v1/jobs", headers=_bearer(API_KEY_B))).json()["data"] == []
            assert len((await c.get("/v1/jobs", headers=_bearer(API_KEY_A))).json()["data"]) == 1
    owners = redis.Redis.from_url(make_settings().redis_url or "").keys("tnllm:jobs:*")
    assert owners and not any(API_KEY_A.encode() in k for k in owners)  # the key itself is never stored


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _broker_messages(store: JobStore) -> int:
    names = [k for k in store.client.keys(GENERATE_QUEUE + "*") if not k.startswith("_")]
    return sum(int(store.client.llen(k)) for k in names)


@pytest.mark.parametrize("priority", [0, 5, 9])
async def test_priority_accepted(client: httpx.AsyncClient, priority: int) -> None:
    assert (await submit(client, priority=priority))["priority"] == priority
