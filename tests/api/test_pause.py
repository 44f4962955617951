"""``POST /v1/jobs/{id}/pause`` and ``/resume`` of queued jobs (no worker: they stay queued), and
their refusals; a running job's pause is tested with real workers (tests/e2e/test_resume_e2e.py)."""

from __future__ import annotations

import httpx

from tnllm.store import JobStore


async def test_a_queued_job_pauses_out_of_the_queue_and_resumes_to_its_place(
    client: httpx.AsyncClient,
) -> None:
    first = (await client.post("/v1/jobs", json={"prompt": "one"})).json()
    second = (await client.post("/v1/jobs", json={"prompt": "two"})).json()
    paused = await client.post(f"/v1/jobs/{first['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert paused.json()["queue_position"] is None
    assert (await client.get(f"/v1/jobs/{second['id']}")).json()["queue_position"] == 0  # moved up
    again = await client.post(f"/v1/jobs/{first['id']}/pause")
    assert again.status_code == 200 and again.json()["status"] == "paused"  # idempotent
    listed = (await client.get("/v1/jobs", params={"status": "paused"})).json()
    assert [j["id"] for j in listed["data"]] == [first["id"]]
    resumed = await client.post(f"/v1/jobs/{first['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert resumed.json()["queue_position"] == 0  # its old place: it was created first
    refused = await client.post(f"/v1/jobs/{first['id']}/resume")
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "job_not_paused"
    assert refused.json()["error"]["status"] == "queued"


async def test_a_paused_job_can_be_cancelled_and_a_terminal_one_not_paused(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/jobs", json={"prompt": "x"})).json()
    await client.post(f"/v1/jobs/{job['id']}/pause")
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    refused = await client.post(f"/v1/jobs/{job['id']}/pause")
    assert refused.status_code == 409 and refused.json()["error"] == {
        "type": "job_terminal", "message": "job already cancelled", "status": "cancelled",
    }  # fmt: skip
    missing = await client.post("/v1/jobs/nope/pause")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
    assert (await client.post("/v1/jobs/nope/resume")).status_code == 404


async def test_pausing_a_running_job_asks_its_worker(
    client: httpx.AsyncClient, worker_store: JobStore
) -> None:
    job = (await client.post("/v1/jobs", json={"prompt": "x"})).json()
    assert worker_store.claim(job["id"], "w1").won
    answer = await client.post(f"/v1/jobs/{job['id']}/pause")
    assert answer.status_code == 202 and answer.json()["status"] == "running"
    assert worker_store.append_many("w1", {job["id"]: ""})[job["id"]].pause_requested
    withdrawn = await client.post(f"/v1/jobs/{job['id']}/resume")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "running"
    assert not worker_store.append_many("w1", {job["id"]: ""})[job["id"]].pause_requested
