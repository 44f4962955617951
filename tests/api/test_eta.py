"""ETAs in the job object, the SSE stream and /metrics, from a worker heartbeat's step time."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx

from tests.api.conftest import FakeWorkerRun, LiveServer
from tests.api.test_stream import sse_events
from tnllm.store import JobStore, WorkerInfo


def _at(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_queued_and_running_jobs_show_their_etas(
    live_server: LiveServer, worker_store: JobStore
) -> None:
    worker_store.heartbeat_worker(WorkerInfo(id="w", model_loaded=True, slots=1, step_time_s=0.5), ttl=60)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        first = (await client.post("/v1/jobs", json={"prompt": "a", "max_new_tokens": 4})).json()
        second = (await client.post("/v1/jobs", json={"prompt": "b", "max_new_tokens": 6})).json()
        now = time.time()
        queued = (await client.get(f"/v1/jobs/{second['id']}")).json()
        # one slot: the first job's 4 tokens (2 s), then this one's 6 (3 s)
        assert queued["queue_position"] == 1
        assert abs(_at(queued["estimated_start_at"]) - (now + 2.0)) < 1.0
        assert abs(_at(queued["estimated_finish_at"]) - (now + 5.0)) < 1.0
        FakeWorkerRun(worker_store, first["id"], "w").claim()
        running = (await client.get(f"/v1/jobs/{first['id']}")).json()
        assert (
            running["estimated_start_at"] is None and abs(_at(running["estimated_finish_at"]) - now - 2.0) < 1
        )
        page = (await client.get("/metrics")).text
        assert "tnllm_queue_estimated_wait_seconds 2.0" in page  # the last queued job waits 4 * 0.5 s
        async with client.stream("GET", f"/v1/jobs/{second['id']}/stream") as response:
            eta = await anext(sse_events(response))
            assert eta.event == "eta" and eta.id is None
            data = json.loads(eta.data)
            assert data["queue_position"] == 0 and set(data) == {
                "queue_position", "estimated_start_at", "estimated_finish_at",
            }  # fmt: skip
