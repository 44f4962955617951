"""``job_deltas`` over a real job stream in Redis, written through the worker's own store calls: a
re-run after a ``reset`` is passed over while it repeats the text already sent, and a re-run that
differs ends the stream (OpenAI chunks cannot take text back)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from tests.api.conftest import FakeWorkerRun, make_job
from tnllm.api.openai.stream import Diverged, job_deltas
from tnllm.store import JobStore


async def _deltas(app: FastAPI, job_id: str) -> list[str]:
    return [text async for _, text, _ in job_deltas(app.state.services.store, job_id)]


async def test_a_rerun_after_a_reset_adds_only_the_new_text(app: FastAPI, worker_store: JobStore) -> None:
    make_job(worker_store, "j-rerun")
    first = FakeWorkerRun(worker_store, "j-rerun", "w1").claim()
    first.emit("Hel", "lo")
    assert worker_store.release("j-rerun", "w1")  # back to the queue
    second = FakeWorkerRun(worker_store, "j-rerun", "w2").claim()
    # a job that cannot resume from its stream (n > 1, logprobs) starts over behind a `reset`
    assert worker_store.reset_stream("j-rerun", "w2", "not_resumable")
    second.emit("He", "llo", " wor", "ld")
    second.succeed()
    deltas = await _deltas(app, "j-rerun")
    assert "".join(deltas) == "Hello world" == second.text
    assert deltas == ["Hel", "lo", " wor", "ld"]


async def test_a_rerun_that_differs_ends_the_stream(app: FastAPI, worker_store: JobStore) -> None:
    make_job(worker_store, "j-diverge")
    first = FakeWorkerRun(worker_store, "j-diverge", "w1").claim()
    first.emit("Hello")
    assert worker_store.release("j-diverge", "w1")
    second = FakeWorkerRun(worker_store, "j-diverge", "w2").claim()
    assert worker_store.reset_stream("j-diverge", "w2", "not_resumable")
    second.emit("Help")
    second.succeed()
    seen: list[str] = []
    with pytest.raises(Diverged):
        async for _, text, _ in job_deltas(app.state.services.store, "j-diverge"):
            seen.append(text)
    assert seen == ["Hello"]
