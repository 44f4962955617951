"""The Batch API's submission resumes after a crash without making a job twice (real Redis, the
app's own services; no worker needed: the jobs stay queued)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from tnllm.api.openai.batch_lines import parse_lines
from tnllm.api.openai.batching import Batches, batch_object, submit_lines
from tnllm.api.openai.files import new_id
from tnllm.config import Settings
from tnllm.store import JobStatus


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(batch_poll_interval=3600)  # these tests drive submission and finalizing


def _file(n: int) -> bytes:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def test_a_crashed_submission_resumes_without_duplicate_jobs(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    batches = Batches(app.state.services)
    upload = await batches.put_file("anonymous", _file(30), "in.jsonl", "batch")
    batch = batch_object(new_id("batch"), "/v1/chat/completions", upload["id"], None)
    assert (await batches.create("anonymous", batch, None))["status"] == "validating"
    # The crash window: 25 jobs were made (and queued) but the process died before recording them.
    lines, _ = parse_lines(_file(30), "/v1/chat/completions", 100)
    orphans = await submit_lines(app.state.services, "anonymous", batch, lines[:25], {"demo"})
    await batches.submit("anonymous", batch["id"])  # the next process (or round) resumes

    answer = await client.get(f"/v1/batches/{batch['id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "in_progress"
    assert answer.json()["request_counts"] == {"total": 30, "completed": 0, "failed": 0}
    recorded = await batches.records.requests(batch["id"])
    assert [r["custom_id"] for r in recorded] == [f"c{i}" for i in range(30)]
    assert [r["job"] for r in recorded[:25]] == [o["job"] for o in orphans]  # the same jobs, not new ones
    listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
    assert len(listed) == 30 and {j["status"] for j in listed} == {JobStatus.QUEUED.value}
    assert {j["priority"] for j in listed} == {app.state.services.settings.batch_priority}


async def test_cancel_while_validating_stops_the_submission(app: FastAPI, client: httpx.AsyncClient) -> None:
    batches = Batches(app.state.services)
    upload = await batches.put_file("anonymous", _file(3), "in.jsonl", "batch")
    batch = await batches.create(
        "anonymous", batch_object(new_id("batch"), "/v1/chat/completions", upload["id"], None), None
    )
    cancelled = (await client.post(f"/v1/batches/{batch['id']}/cancel")).json()
    assert cancelled["status"] == "cancelling"
    await batches.submit("anonymous", batch["id"])
    assert await batches.records.requests(batch["id"]) == []  # nothing submitted after the cancel
    await batches.finalize_due()
    final = (await client.get(f"/v1/batches/{batch['id']}")).json()
    assert final["status"] == "cancelled" and final["output_file_id"] is None


async def test_a_full_queue_throttles_the_submission_instead_of_failing_lines(
    make_settings: Callable[..., Settings],
) -> None:
    from tnllm.api.main import create_app

    app = create_app(make_settings(batch_poll_interval=3600, max_queued=5))
    async with app.router.lifespan_context(app):
        batches = Batches(app.state.services)
        upload = await batches.put_file("anonymous", _file(8), "in.jsonl", "batch")
        batch = batch_object(new_id("batch"), "/v1/chat/completions", upload["id"], None)
        await batches.create("anonymous", batch, None)
        await batches.finalize_due()  # submits until the queue is full
        taken = await batches.records.requests(batch["id"])
        assert len(taken) == 5 and all(item["job"] and item["error"] is None for item in taken)
        assert (await batches.records.get_batch(batch["id"]))[1]["status"] == "in_progress"  # type: ignore[index]
        for item in taken:  # the queue drains (here: by cancelling what waits)
            await app.state.services.store.cancel(item["job"])
        await batches.finalize_due()  # resumes at the first line not taken
        assert [i["custom_id"] for i in await batches.records.requests(batch["id"])] == [
            f"c{i}" for i in range(8)
        ]


async def test_lists_page_with_after_and_limit(app: FastAPI, client: httpx.AsyncClient) -> None:
    batches = Batches(app.state.services)
    made = []
    for i in range(3):
        made.append((await batches.put_file("anonymous", _file(1), f"f{i}.jsonl", "batch"))["id"])
        created = batch_object(new_id("batch"), "/v1/chat/completions", made[-1], None)
        await batches.create("anonymous", created, None)
    for path in ("/v1/files", "/v1/batches"):
        first = (await client.get(path, params={"limit": 2})).json()
        assert len(first["data"]) == 2 and first["has_more"] and first["last_id"] == first["data"][-1]["id"]
        rest = (await client.get(path, params={"limit": 2, "after": first["last_id"]})).json()
        assert len(rest["data"]) == 1 and not rest["has_more"]
        ids = [d["id"] for d in first["data"] + rest["data"]]
        assert len(set(ids)) == 3
    assert [f["id"] for f in (await client.get("/v1/files")).json()["data"]] == made[::-1]  # same second too
