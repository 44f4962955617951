"""``continue_from`` checks and routing, and ``/v1/prefixes``, through the real app on real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from tests.api.conftest import API_KEY_A, API_KEY_B, FakeWorkerRun
from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.protocol.celery import broker_lists
from tnllm.protocol.jobs import ChatMessage, Conversation
from tnllm.protocol.tasks import GENERATE_QUEUE, broker_priority, worker_queue
from tnllm.store import JobStore
from tnllm.store.ops import WorkerInfo
from tnllm.store.states import live_prefixes, save_conversation
from tnllm.worker.orphans import message_job_id

A = {"Authorization": f"Bearer {API_KEY_A}"}
B = {"Authorization": f"Bearer {API_KEY_B}"}


@pytest.fixture
def keyed(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(api_keys=[API_KEY_A, API_KEY_B])


@pytest.fixture
async def http(keyed: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(keyed)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.fixture
def store(keyed: Settings) -> Iterator[JobStore]:
    s = JobStore.from_settings(keyed)
    yield s
    s.client.close()


async def succeeded(http: httpx.AsyncClient, store: JobStore, worker: str = "w-live") -> str:
    """A job of key A that a worker ran and stored a conversation for."""
    job_id = (await http.post("/v1/jobs", json={"prompt": "hi"}, headers=A)).json()["id"]
    run = FakeWorkerRun(store, job_id, worker).claim()
    run.emit("hello")
    run.succeed()
    turns = [ChatMessage(role="user", content="hi")]
    save_conversation(
        store.client, job_id, Conversation(ids=[1, 5, 6, 7], turns=turns, reply="hello", worker=worker), 60
    )
    return job_id


def queued_in(store: JobStore, queue: str, priority: int = 0) -> list[str | None]:
    raw = store.client.lrange(broker_lists(queue)[broker_priority(priority)], 0, -1)
    return [message_job_id(json.loads(m)) for m in raw]


async def test_a_continuation_goes_to_the_queue_of_the_live_worker_holding_its_state(
    http: httpx.AsyncClient, store: JobStore
) -> None:
    parent = await succeeded(http, store)
    store.heartbeat_worker(WorkerInfo(id="w-live", model_loaded=True), ttl=30)
    body = {"messages": [{"role": "user", "content": "more"}], "continue_from": parent}
    routed = await http.post("/v1/jobs", json=body, headers=A)
    assert routed.status_code == 202, routed.text
    assert routed.json()["continue_from"] == parent and routed.json()["state_cache"] is True
    assert queued_in(store, worker_queue("w-live")) == [routed.json()["id"]]
    forced = await http.post("/v1/jobs", json={**body, "state_cache": False}, headers=A)
    assert forced.json()["id"] in queued_in(store, GENERATE_QUEUE), "no state wanted: any worker"
    store.remove_worker("w-live")
    gone = await http.post("/v1/jobs", json=body, headers=A)
    assert gone.json()["id"] in queued_in(store, GENERATE_QUEUE), "its worker is gone: any worker"


async def test_only_the_owners_succeeded_jobs_can_be_continued(
    http: httpx.AsyncClient, store: JobStore
) -> None:
    parent = await succeeded(http, store)
    other = await http.post("/v1/jobs", json={"prompt": "x", "continue_from": parent}, headers=B)
    assert other.status_code == 404 and other.json()["error"]["field"] == "continue_from"
    queued = (await http.post("/v1/jobs", json={"prompt": "x"}, headers=A)).json()["id"]
    r = await http.post("/v1/jobs", json={"prompt": "x", "continue_from": queued}, headers=A)
    assert r.status_code == 409 and r.json()["error"]["type"] == "not_continuable"
    assert "queued" in r.json()["error"]["message"]
    store.client.delete(f"tnllm:conv:{parent}")
    r = await http.post("/v1/jobs", json={"prompt": "x", "continue_from": parent}, headers=A)
    assert r.status_code == 409 and "no stored conversation" in r.json()["error"]["message"]
    r = await http.post("/v1/jobs", json={"prompt": "x", "continue_from": "y" * 200}, headers=A)
    assert r.status_code == 422 and r.json()["error"]["field"] == "continue_from"


async def test_prefixes_are_listed_for_the_workers_until_deleted(
    http: httpx.AsyncClient, store: JobStore
) -> None:
    r = await http.post("/v1/prefixes", json={"messages": [{"role": "user", "content": "doc"}]}, headers=A)
    assert r.status_code == 201, r.text
    prefix = r.json()
    assert prefix["id"].startswith("pfx_") and r.headers["location"] == f"/v1/prefixes/{prefix['id']}"
    assert list(live_prefixes(store.client)) == [prefix["id"]]
    assert (await http.get(f"/v1/prefixes/{prefix['id']}", headers=B)).status_code == 404
    assert (await http.delete(f"/v1/prefixes/{prefix['id']}", headers=B)).status_code == 404
    assert (await http.get(f"/v1/prefixes/{prefix['id']}", headers=A)).json()["messages"][0][
        "content"
    ] == "doc"
    assert (await http.delete(f"/v1/prefixes/{prefix['id']}", headers=A)).status_code == 200
    assert live_prefixes(store.client) == {}
    assert (await http.get(f"/v1/prefixes/{prefix['id']}", headers=A)).status_code == 404
    for bad in ({}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, {"prompt": ""}):
        assert (await http.post("/v1/prefixes", json=bad, headers=A)).status_code == 422, bad
