"""Crash resume and pause on real processes (one Redis, one API, workers started as needed): a
SIGKILLed or warm-shut-down worker's jobs continue on another worker from the tokens they had
streamed, and a paused job continues where it stopped; an SSE client reading from the start sees no
``reset`` and no repeated text, and the final text equals an uninterrupted run's (greedy, seeded)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.client import Jobs, debug
from tests.fixtures.services import Stack
from tnllm.cli.supervisor import Child
from tnllm.store.resume import streamed_ids
from tnllm.store.server import RedisServer

pytestmark = pytest.mark.slow

GREEDY = {"max_new_tokens": 48, "ignore_eos": True}
SEEDED = {"max_new_tokens": 48, "ignore_eos": True, "temperature": 0.9, "top_p": 0.95, "seed": 77}
LONG = {"max_new_tokens": 800, "ignore_eos": True, "temperature": 0.8, "seed": 3}


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Jobs]]:
    stack = Stack(
        module_redis.url, demo_model_dir, tmp_path_factory.mktemp("resume"),
        TNLLM_ENGINE_SLOTS="4", TNLLM_DEBUG_FAULTS="1", TNLLM_WORKER_SHUTDOWN_GRACE="0.2",
    )  # fmt: skip
    _, url = stack.start_api()
    jobs = Jobs(url)
    yield stack, jobs
    jobs.close()
    stack.close()


def worker(stack: Stack) -> Child:
    """The live worker of the module's stack (a new one when none is alive)."""
    alive = [c for c in stack.children if c.name.startswith("w") and c.alive]
    return alive[0] if alive else stack.start_worker(f"w{len(stack.children)}")


def sse(base_url: str, job_id: str) -> tuple[list[tuple[str, Any]], threading.Thread]:
    """Read the job's SSE stream from the start on a thread, collecting (event, data)."""
    into: list[tuple[str, Any]] = []

    def read() -> None:
        with httpx.stream("GET", f"{base_url}/v1/jobs/{job_id}/stream", timeout=120) as response:
            event = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    into.append((event, json.loads(line[5:].strip())))
                    if event == "done":
                        return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return into, thread


def same_result(job: dict[str, Any], plain: dict[str, Any]) -> bool:
    """Text, finish reason and token counts equal (``cached_tokens`` depends on the state cache)."""
    a, b = job["result"], plain["result"]
    counts = ("prompt_tokens", "completion_tokens")
    return (a["text"], a["finish_reason"]) == (b["text"], b["finish_reason"]) and all(
        a["usage"][k] == b["usage"][k] for k in counts
    )


def check_stream(events: list[tuple[str, Any]], reader: threading.Thread, plain: dict[str, Any]) -> None:
    """What the client saw: no reset, and the tokens' text is exactly the uninterrupted text."""
    reader.join(30)
    kinds = [e for e, _ in events]
    assert "reset" not in kinds and kinds[-1] == "done"
    assert "".join(d["text"] for e, d in events if e == "token") == plain["result"]["text"]


def test_sigkilled_worker_jobs_resume_from_their_stream(stack: tuple[Stack, Jobs]) -> None:
    services, jobs = stack
    w1 = worker(services)
    crash = debug(crash_after_tokens=12)
    ids = [jobs.submit("Resume me", **GREEDY, metadata=crash)["id"],
           jobs.submit("And me, seeded", **SEEDED, metadata=crash)["id"]]  # fmt: skip
    readers = [sse(services.api_url, i) for i in ids]
    assert w1.wait(timeout=60) is not None  # killed itself at its 12th token
    store = services.store()
    streamed = {i: streamed_ids(store.streamed(i)) or [] for i in ids}
    store.client.close()
    assert max(len(v) for v in streamed.values()) >= 12  # the first job at its 12th token killed it
    w2 = worker(services)
    done = [jobs.wait(i, timeout=90) for i in ids]
    ref = [jobs.wait(jobs.submit("Resume me", **GREEDY)["id"]),
           jobs.wait(jobs.submit("And me, seeded", **SEEDED)["id"])]  # fmt: skip
    for job, plain, (events, reader) in zip(done, ref, readers, strict=True):
        assert job["status"] == plain["status"] == "succeeded", job
        assert job["attempts"] == 2 and same_result(job, plain)
        check_stream(events, reader, plain)
    assert "resuming after" in w2.log_tail(200)


def test_pause_then_resume_gives_the_text_of_no_pause(stack: tuple[Stack, Jobs]) -> None:
    services, jobs = stack
    worker(services)
    job_id = jobs.submit("Pause me", **LONG)["id"]
    events, reader = sse(services.api_url, job_id)
    jobs.wait_status(job_id, {"running"})
    while len(events) < 5:
        time.sleep(0.02)
    answer = jobs.http.post(f"/v1/jobs/{job_id}/pause")
    assert answer.status_code == 202 and answer.json()["status"] == "running", answer.text
    paused = jobs.wait_status(job_id, {"paused"}, timeout=30)
    assert paused["attempts"] == 0 and paused["queue_position"] is None
    held = len(events)
    time.sleep(0.5)
    assert len(events) == held  # a paused job generates nothing
    answer = jobs.http.post(f"/v1/jobs/{job_id}/resume")
    assert answer.status_code == 200 and answer.json()["status"] in ("queued", "running"), answer.text
    assert jobs.http.post(f"/v1/jobs/{job_id}/resume").status_code in (200, 409)  # queued or running
    job = jobs.wait(job_id, timeout=120)
    plain = jobs.wait(jobs.submit("Pause me", **LONG)["id"], timeout=120)
    assert job["status"] == "succeeded" and same_result(job, plain)
    check_stream(events, reader, plain)
    refused = jobs.http.post(f"/v1/jobs/{job_id}/pause")
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "job_terminal"


def test_a_job_released_at_warm_shutdown_resumes_from_its_stream(stack: tuple[Stack, Jobs]) -> None:
    services, jobs = stack
    w = worker(services)
    longer = {**LONG, "max_new_tokens": 3000}  # still running when the 0.2 s grace runs out
    job_id = jobs.submit("A long one", **longer)["id"]
    events, reader = sse(services.api_url, job_id)
    deadline = time.monotonic() + 60
    while len(events) < 5:
        assert time.monotonic() < deadline, "no text streamed"
        time.sleep(0.05)
    assert w.stop(timeout=30) == 0  # SIGTERM: the grace runs out, the job is released
    before = jobs.get(job_id)
    assert before["status"] == "queued" and before["attempts"] == 0
    worker(services)
    job = jobs.wait(job_id, timeout=120)
    plain = jobs.wait(jobs.submit("A long one", **longer)["id"], timeout=120)
    assert job["status"] == "succeeded" and same_result(job, plain)
    check_stream(events, reader, plain)


def test_a_priority_9_job_preempts_a_full_worker_and_nobody_recomputes(stack: tuple[Stack, Jobs]) -> None:
    services, jobs = stack
    for child in services.children:
        if child.name.startswith("w") and child.alive:
            child.stop(timeout=30)
    w = services.start_worker("wp", TNLLM_ENGINE_SLOTS="2")
    low = {"max_new_tokens": 1200, "ignore_eos": True, "temperature": 0.7, "seed": 11}
    busy = [jobs.submit(f"low {i}", **low)["id"] for i in range(2)]
    feeds = [sse(services.api_url, i) for i in busy]
    deadline = time.monotonic() + 60
    while min(len(events) for events, _ in feeds) < 3:
        assert time.monotonic() < deadline, "the low jobs never streamed"
        time.sleep(0.02)
    urgent = jobs.submit("urgent", max_new_tokens=8, ignore_eos=True, priority=9)["id"]
    done = jobs.wait(urgent, timeout=60)
    assert done["status"] == "succeeded"
    # it ran while both slots were held by the low jobs: one of them was preempted, not finished
    lows = [jobs.get(i) for i in busy]
    assert all(j["status"] == "running" for j in lows), [j["status"] for j in lows]
    assert preemptions(services, "wp") >= 1
    results = [jobs.wait(i, timeout=120) for i in busy]
    plain = [jobs.wait(jobs.submit(f"low {i}", **low)["id"], timeout=120) for i in range(2)]
    for job, ref, (events, reader) in zip(results, plain, feeds, strict=True):
        assert same_result(job, ref) and job["attempts"] == 1
        check_stream(events, reader, ref)
    assert w.alive


def preemptions(stack: Stack, name: str, timeout: float = 5.0) -> float:
    """The worker's ``tnllm_engine_preemptions_total`` (its engine's stats come every 0.25 s)."""
    store = stack.store()
    try:
        (info,) = [w for w in store.workers() if w.hostname == f"{name}@test"]
    finally:
        store.client.close()
    deadline = time.monotonic() + timeout
    while True:
        page = httpx.get(f"http://127.0.0.1:{info.metrics_port}/metrics").text
        found = re.search(r"^tnllm_engine_preemptions_total (\S+)$", page, flags=re.M)
        value = float(found.group(1)) if found else 0.0
        if value >= 1 or time.monotonic() > deadline:
            return value
        time.sleep(0.2)
