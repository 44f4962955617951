"""Crash resume on real processes: a SIGKILLed (or warm-shut-down) worker's jobs continue on another
worker from the tokens they had streamed; an SSE client reading from the start sees no ``reset`` and
no repeated text, and the final text equals an uninterrupted run's (greedy and seeded)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.client import Jobs, debug
from tests.fixtures.services import Stack
from tnllm.store.resume import streamed_ids

pytestmark = pytest.mark.slow

GREEDY = {"max_new_tokens": 48, "ignore_eos": True}
SEEDED = {"max_new_tokens": 48, "ignore_eos": True, "temperature": 0.9, "top_p": 0.95, "seed": 77}


@pytest.fixture
def stack(redis_url: str, stack_factory: Any) -> Iterator[Stack]:
    stack: Stack = stack_factory(redis_url, TNLLM_ENGINE_SLOTS="4", TNLLM_DEBUG_FAULTS="1")
    yield stack


def sse(base_url: str, job_id: str, into: list[tuple[str, Any]]) -> threading.Thread:
    """Read the job's SSE stream from the start on a thread, collecting (event, data)."""

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
    return thread


def test_sigkilled_worker_jobs_resume_from_their_stream(stack: Stack) -> None:
    w1 = stack.start_worker("w1")
    _, url = stack.start_api()
    jobs = Jobs(url)
    try:
        crash = debug(crash_after_tokens=12)
        ids = [jobs.submit("Resume me", **GREEDY, metadata=crash)["id"],
               jobs.submit("And me, seeded", **SEEDED, metadata=crash)["id"]]  # fmt: skip
        events: dict[str, list[tuple[str, Any]]] = {i: [] for i in ids}
        readers = [sse(url, i, events[i]) for i in ids]
        assert w1.wait(timeout=60) is not None  # killed itself at its 12th token
        store = stack.store()
        streamed = {i: streamed_ids(store.streamed(i)) or [] for i in ids}
        store.client.close()
        assert len(streamed[ids[0]]) >= 12  # the greedy job's 12th token killed its worker
        stack.start_worker("w2")
        done = [jobs.wait(i, timeout=90) for i in ids]
        # the same jobs, never interrupted
        ref = [jobs.wait(jobs.submit("Resume me", **GREEDY)["id"]),
               jobs.wait(jobs.submit("And me, seeded", **SEEDED)["id"])]  # fmt: skip
        for reader in readers:
            reader.join(30)
        for job_id, job, plain in zip(ids, done, ref, strict=True):
            assert job["status"] == plain["status"] == "succeeded", job
            assert job["attempts"] == 2 and job["result"]["text"] == plain["result"]["text"]
            assert job["result"]["usage"] == plain["result"]["usage"]
            kinds = [e for e, _ in events[job_id]]
            assert "reset" not in kinds and kinds[-1] == "done"
            text = "".join(d["text"] for e, d in events[job_id] if e == "token")
            assert text == plain["result"]["text"]  # no repeated and no missing text
        assert "resuming after" in stack.children[-1].log_tail(200)
    finally:
        jobs.close()


def test_a_job_released_at_warm_shutdown_resumes_from_its_stream(stack: Stack) -> None:
    w1 = stack.start_worker("w1", TNLLM_WORKER_SHUTDOWN_GRACE="0.2")
    _, url = stack.start_api()
    jobs = Jobs(url)
    try:
        long = {"max_new_tokens": 1500, "ignore_eos": True, "temperature": 0.8, "seed": 3}
        job_id = jobs.submit("A long one", **long)["id"]
        events: list[tuple[str, Any]] = []
        reader = sse(url, job_id, events)
        deadline = time.monotonic() + 60
        while len(events) < 5:
            assert time.monotonic() < deadline, "no text streamed"
            time.sleep(0.05)
        assert w1.stop(timeout=30) == 0  # SIGTERM: the grace runs out, the job is released
        before = jobs.get(job_id)
        assert before["status"] == "queued" and before["attempts"] == 0
        stack.start_worker("w2")
        job = jobs.wait(job_id, timeout=120)
        plain = jobs.wait(jobs.submit("A long one", **long)["id"], timeout=120)
        reader.join(30)
        assert job["status"] == "succeeded" and job["result"]["text"] == plain["result"]["text"]
        assert [e for e, _ in events].count("reset") == 0
        assert "".join(d["text"] for e, d in events if e == "token") == plain["result"]["text"]
    finally:
        jobs.close()
