"""SSE: live tokens through a real uvicorn server, late join, Last-Event-ID resume, disconnects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from tests.api.conftest import FakeWorkerRun, LiveServer
from tnllm.store import JobStore


@dataclass
class Event:
    event: str
    data: str
    id: str | None


async def sse_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream body incrementally (comments and pings skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield Event(fields.get("event", "message"), fields["data"], fields.get("id"))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


async def test_live_stream_through_uvicorn(live_server: LiveServer, worker_store: JobStore) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
        run = FakeWorkerRun(worker_store, job["id"]).claim()
        async with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            ids = run.emit("Hel")
            first = await anext(events)  # arrives while the job is still running
            assert (first.event, json.loads(first.data), first.id) == (
                "token",
                {"text": "Hel", "index": 0},
                ids[0],
            )
            ids = run.emit("lo", " world")
            second, third = await anext(events), await anext(events)
            assert [second.id, third.id] == ids
            assert json.loads(third.data) == {"text": " world", "index": 0}
            run.succeed()
            done = await anext(events)
            assert done.event == "done"
            final = json.loads(done.data)
            assert final["status"] == "succeeded" and final["result"]["text"] == "Hello world"


async def test_disconnect_does_not_affect_the_job(live_server: LiveServer, worker_store: JobStore) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
        run = FakeWorkerRun(worker_store, job["id"]).claim()
        async with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as response:
            run.emit("a")
            assert (await anext(sse_events(response))).event == "token"
        # client gone; the worker carries on and the record completes
        run.emit("b")
        run.succeed()
        final = (await client.get(f"/v1/jobs/{job['id']}")).json()
        assert final["status"] == "succeeded" and final["result"]["text"] == "ab"


async def test_late_join_replays_then_done(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
    run = FakeWorkerRun(worker_store, job["id"]).claim()
    ids = run.emit("x", "y") + run.emit("z")
    run.succeed()
    r = await client.get(f"/v1/jobs/{job['id']}/stream")
    events = [e async for e in sse_events(r)]
    assert [e.event for e in events] == ["token", "token", "token", "done"]
    assert [e.id for e in events[:3]] == ids
    assert "".join(json.loads(e.data)["text"] for e in events[:3]) == "xyz"
    assert json.loads(events[-1].data)["result"]["text"] == "xyz"

    # resume after the second token: only what came later
    r = await client.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": ids[1]})
    resumed = [e async for e in sse_events(r)]
    assert [(e.event, e.id) for e in resumed[:1]] == [("token", ids[2])]
    assert [e.event for e in resumed] == ["token", "done"]

    # resume after done: just the final job object again
    r = await client.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": events[-1].id or ""})
    assert [e.event for e in [e async for e in sse_events(r)]] == ["done"]

    bad = await client.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "Last-Event-ID"


async def test_late_join_while_running_then_live(live_server: LiveServer, worker_store: JobStore) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
        run = FakeWorkerRun(worker_store, job["id"]).claim()
        run.emit("early ")
        async with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as response:
            events = sse_events(response)
            assert json.loads((await anext(events)).data) == {"text": "early ", "index": 0}  # replayed
            run.emit("late")
            assert json.loads((await anext(events)).data) == {"text": "late", "index": 0}  # live
            run.succeed()
            assert (await anext(events)).event == "done"


async def test_cancelled_queued_job_stream_ends(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    events = [e async for e in sse_events(await client.get(f"/v1/jobs/{job['id']}/stream"))]
    assert [e.event for e in events] == ["done"]
    assert json.loads(events[0].data)["status"] == "cancelled"


async def test_requeued_job_continues_its_stream(client: httpx.AsyncClient, worker_store: JobStore) -> None:
    """A requeue writes no reset: the next attempt continues the stream (it resumes from its ids)."""
    job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
    first = FakeWorkerRun(worker_store, job["id"], "w1").claim()
    first.emit("Hel")
    worker_store.client.delete(f"tnllm:lease:{job['id']}")  # w1 died
    assert worker_store.reap(job["id"]).action == "requeued"
    second = FakeWorkerRun(worker_store, job["id"], "w2").claim()
    second.emit("lo")
    second.succeed()
    events = [e async for e in sse_events(await client.get(f"/v1/jobs/{job['id']}/stream"))]
    assert [e.event for e in events] == ["token", "token", "done"]


async def test_a_stream_that_cannot_resume_emits_reset(
    client: httpx.AsyncClient, worker_store: JobStore
) -> None:
    job = (await client.post("/v1/jobs", json={"prompt": "hi"})).json()
    run = FakeWorkerRun(worker_store, job["id"], "w1").claim()
    run.emit("void")
    assert worker_store.reset_stream(job["id"], "w1", "not_resumable")
    run.emit("fresh")
    run.succeed()
    events = [e async for e in sse_events(await client.get(f"/v1/jobs/{job['id']}/stream"))]
    assert [e.event for e in events] == ["token", "reset", "token", "done"]
    assert json.loads(events[1].data) == {"reason": "not_resumable"}
