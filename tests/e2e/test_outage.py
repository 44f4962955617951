"""Redis outages on real processes: live workers keep their jobs, dead ones are still recovered.

Redis (AOF on) is stopped cleanly and started again on the same port and data while `tnllm worker`
processes run 16 jobs: half of them held as running past the outage and the grace after it (the
``until`` debug fault), half generating through it. Every result is checked token for token
against the same prompts recomputed by an in-process engine, and so is the text of every stream.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client import Producer, debug
from tests.fixtures.services import Stack
from tnllm.cli.supervisor import Child
from tnllm.store import GenerationParams, JobRecord, JobStatus
from tnllm.store.server import RedisServer
from tnllm.worker.reaper import Reaper

pytestmark = pytest.mark.slow

#: Tokens of a job generating through the outage, and of a held job once its hold ends.
STREAM_TOKENS = 2000
HELD_TOKENS = 48
LEASE_TTL = 5.0  # tests/fixtures/services.py E2E_ENV


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One worker with 16 slots for the module (it lives through every outage)."""
    # no preemption reserve thread: a worker takes exactly as many jobs as it has slots
    stack = Stack(
        module_redis.url, demo_model_dir, tmp_path_factory.mktemp("outage"),
        TNLLM_DEBUG_FAULTS="1", TNLLM_WORKER_PREEMPT_RESERVE="0",
    )  # fmt: skip
    try:
        stack.start_worker("w1", TNLLM_ENGINE_SLOTS="16")
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def producer(stack: Stack) -> Iterator[Producer]:
    jobs = Producer(stack.settings())
    yield jobs
    jobs.close()


def reference_texts(stack: Stack, params: list[GenerationParams]) -> list[str]:
    """The texts an in-process engine generates for ``params`` (the worker's prompt rendering)."""
    import torch

    from tnllm.engine.core import Engine
    from tnllm.engine.types import EngineRequest
    from tnllm.model.loading import load_pretrained
    from tnllm.text.prompt import render_prompt
    from tnllm.text.tokenizer import Tokenizer

    settings = stack.settings()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers' engines run (OMP_NUM_THREADS=1)
    try:
        tokenizer = Tokenizer.from_pretrained(settings.model)
        engine = Engine(load_pretrained(settings.model), tokenizer, slots=len(params))
        requests = [
            EngineRequest(f"ref-{i}", render_prompt(tokenizer, p, settings.system_prompt), p.sampling())
            for i, p in enumerate(params)
        ]
        return [result.text for result in engine.generate(requests)]
    finally:
        torch.set_num_threads(threads)


def job_params(i: int, held: bool) -> dict[str, Any]:
    tokens = HELD_TOKENS if held else STREAM_TOKENS
    return {"prompt": f"outage job {i}", "max_new_tokens": tokens, "ignore_eos": True}


def submit(jobs: Producer, count: int, hold_until: float) -> list[tuple[str, dict[str, Any]]]:
    """``count`` jobs, every other one held as running until ``hold_until`` (epoch seconds)."""
    made = []
    for i in range(count):
        held = i % 2 == 0
        params = job_params(i, held)
        metadata = debug(until=hold_until) if held else None
        made.append((jobs.submit(**params, metadata=metadata), params))
    return made


def wait_running(jobs: Producer, ids: list[str], timeout: float = 60.0) -> dict[str, str]:
    """Block until every job runs; returns {job_id: lease_owner}."""
    deadline = time.monotonic() + timeout
    while True:
        records = [jobs.store.get(i) for i in ids]
        if all(r is not None and r.status is JobStatus.RUNNING for r in records):
            return {r.id: r.lease_owner or "" for r in records if r is not None}
        assert time.monotonic() < deadline, [(r.id, r.status) for r in records if r]
        time.sleep(0.05)


def stream_text(jobs: Producer, job_id: str) -> tuple[str, list[str]]:
    """(text of the token entries after the last reset, the reset reasons)."""
    text: list[str] = []
    resets: list[str] = []
    for entry in jobs.store.read_stream(job_id):
        if entry.type == "reset":
            resets.append(entry.reason or "")
            text = []
        elif entry.type == "token":
            text.append(entry.text)
    return "".join(text), resets


def check_results(
    stack: Stack, jobs: Producer, made: list[tuple[str, dict[str, Any]]], records: list[JobRecord]
) -> None:
    """Every job succeeded with the reference text, in its result and in its stream."""
    expected = reference_texts(stack, [GenerationParams(**params) for _, params in made])
    for (job_id, _), record, text in zip(made, records, expected, strict=True):
        assert record.status is JobStatus.SUCCEEDED and record.result is not None, record
        assert record.result.text == text, f"job {job_id}: result differs from the reference"
        streamed, _ = stream_text(jobs, job_id)
        assert streamed == text, f"job {job_id}: stream differs from the reference"
        assert len(jobs.done_entries(job_id)) == 1


def make_reaper(stack: Stack, jobs: Producer) -> Reaper:
    """A reaper like every worker's, run by the test: after the outage it looks first."""
    from tnllm.protocol.celery import send_generate

    def send(job_id: str, priority: int) -> None:
        send_generate(jobs.app, job_id, priority)

    return Reaper(jobs.store, stack.settings(), worker_id="test-reaper", send=send)


def outage(redis: RedisServer, seconds: float, live: Child, reaper: Reaper, during: Any = None) -> float:
    """Stop Redis cleanly (AOF flushed), wait, start it on the same port and data. The live worker
    is paused (SIGSTOP) across the restart, so the test's reaper surely looks at the leases before
    the live worker renews them: it must take none. Returns the time Redis answered again."""
    redis.stop()
    started = time.monotonic()
    if during is not None:
        time.sleep(2.0)
        during()
    time.sleep(max(0.0, seconds - 1 - (time.monotonic() - started)))
    live.signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        redis.start()
        back = time.monotonic()
        while time.monotonic() < back + 1.0:
            assert reaper.reap_once() == [], "leases judged before the live worker could renew them"
            time.sleep(0.1)
    finally:
        live.signal(signal.SIGCONT)
    return back


def test_a_15s_outage_keeps_live_jobs_and_a_worker_killed_in_it_is_recovered(
    module_redis: RedisServer, stack: Stack, producer: Producer
) -> None:
    """With a 5 s lease TTL, a 15 s outage: the 16 jobs of the live worker run once (attempt 1, no
    reset in their streams); the 4 jobs of a worker SIGKILLed during the outage are requeued about
    one lease TTL after Redis is back, and then run once more."""
    w2: Child = stack.start_worker("w2", TNLLM_ENGINE_SLOTS="4")
    outage_s = 15.0
    # held past the outage and the grace after it, so the reaper judges them while they run
    hold_until = time.time() + 3 + outage_s + LEASE_TTL + 4
    made = submit(producer, 20, hold_until)
    ids = [job_id for job_id, _ in made]
    owners = wait_running(producer, ids)
    victims = [i for i in ids if owners[i].startswith("w2@")]
    assert len(victims) == 4, owners  # prefetch = concurrency: w1 takes 16, w2 takes 4
    w1 = stack.children[0]
    reaper = make_reaper(stack, producer)
    back = outage(module_redis, outage_s, w1, reaper, during=lambda: w2.signal(signal.SIGKILL))
    deadline = back + 4 * LEASE_TTL
    while not all(r is not None and (r.status is JobStatus.QUEUED or r.attempt == 2)
                  for r in map(producer.store.get, victims)):  # fmt: skip
        assert time.monotonic() < deadline, "the killed worker's jobs were not requeued"
        reaper.reap_once()  # the test's reaper keeps looking too: it must take only the dead's jobs
        time.sleep(0.05)
    recovered_s = time.monotonic() - back
    print(f"killed worker's jobs requeued {recovered_s:.1f}s after Redis was back")
    assert recovered_s < LEASE_TTL + 3.0
    records = producer.wait_all(ids, timeout=180)
    check_results(stack, producer, made, records)
    for record in records:
        _, resets = stream_text(producer, record.id)
        if record.id in victims:
            # requeued, and resumed from its stream: no reset (docs/STATE.md, crash resume)
            assert record.attempt == 2 and resets == [], record
        else:
            assert record.attempt == 1 and resets == [], record
        assert (record.lease_owner or "").startswith("w1@")


def test_a_60s_outage_reruns_nothing(module_redis: RedisServer, stack: Stack, producer: Producer) -> None:
    """A minute without Redis: 16 running jobs (8 held past it, 8 generating through it) each
    finish once, with the reference text."""
    outage_s = 60.0
    made = submit(producer, 16, time.time() + 3 + outage_s + LEASE_TTL + 4)
    ids = [job_id for job_id, _ in made]
    wait_running(producer, ids)
    outage(module_redis, outage_s, stack.children[0], make_reaper(stack, producer))
    records = producer.wait_all(ids, timeout=180)
    check_results(stack, producer, made, records)
    for record in records:
        assert record.attempt == 1 and stream_text(producer, record.id)[1] == [], record
