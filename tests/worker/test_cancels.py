"""Cancel pushed to the worker (pub/sub): the engine stops a running job at once, with the stream
pump and the heartbeat too slow here to be the ones that noticed (real Redis, real engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tnllm.config import Settings
from tnllm.engine.core import Engine
from tnllm.store import GenerationParams, JobStatus, keys
from tnllm.worker.job_runner import run_job
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture
def runtime(redis_url: str, demo_model_dir: Path) -> Iterator[WorkerRuntime]:
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings(
        redis_url=redis_url,
        lease_ttl=60.0,
        lease_renew_interval=30.0,  # the heartbeat's cancel check comes too late for this test
        reaper_interval=60.0,
        stream_flush_interval=5.0,  # and so does the pump's (every second round: 10 s)
    )
    rt = WorkerRuntime(settings, hostname="cancels@test")
    engine = Engine(load_pretrained(demo_model_dir).eval(), load_tokenizer(demo_model_dir), slots=4)
    rt.engine = engine  # type: ignore[assignment]  # the in-process engine has the client's surface
    engine.start()
    rt.start_background()
    assert rt.cancels.subscribed.wait(10)
    try:
        yield rt
    finally:
        rt.close()
        torch.set_num_threads(threads)


def test_a_pushed_cancel_stops_the_engine_at_once(runtime: WorkerRuntime) -> None:
    store = runtime.store
    params = GenerationParams(prompt="a long story", max_new_tokens=16000 - 64, ignore_eos=True)
    assert store.create(job_id="long", owner="o", params=params).kind == "created"
    outcome: list[str] = []
    task = threading.Thread(target=lambda: outcome.append(run_job(runtime, "long")))
    task.start()
    deadline = time.monotonic() + 30
    while (active := runtime.active.get("long")) is None or active.writer is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # generating
    asked = time.time()
    assert store.cancel("long").kind == "requested"
    task.join(30)
    record = store.get("long")
    assert outcome == ["cancelled"] and record is not None and record.status is JobStatus.CANCELLED
    assert record.finished_at is not None and record.finished_at.timestamp() - asked < 1.0
    assert record.result is not None and 0 < record.result.usage.completion_tokens < params.max_new_tokens
    streamed = [f["text"] for _, f in store.client.xrange(keys.stream("long")) if f.get("t") == "token"]
    assert "".join(streamed) == record.result.text  # the partial text, in the stream and the result


def test_a_push_for_a_job_running_elsewhere_is_ignored(runtime: WorkerRuntime) -> None:
    assert runtime.cancels.handle("not-here") is False
    job = runtime.track("here")
    try:
        assert runtime.cancels.handle("here") is True and job.cancel.is_set()
    finally:
        runtime.untrack("here", job)
