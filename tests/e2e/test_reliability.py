"""Reliability on real processes: priorities, dead workers, crash loops, time limits, Redis outages.

Jobs are created the way the API creates them (store record + Celery message, ``Producer``); the
workers are real `tnllm worker` processes on the demo model, killed with real signals.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.client import Producer, debug
from tests.fixtures.services import Stack
from tnllm.cli.supervisor import child_pids
from tnllm.store import JobStatus
from tnllm.store.server import RedisServer
from tnllm.worker.process import EXIT_ENGINE_LOST, EXIT_MODEL_LOAD_FAILED

pytestmark = pytest.mark.slow


@pytest.fixture
def producer_for() -> Iterator[Callable[[Stack], Producer]]:
    made: list[Producer] = []

    def make(stack: Stack) -> Producer:
        made.append(Producer(stack.settings()))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_high_priority_job_starts_before_earlier_low_ones(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    stack = stack_factory(redis_url, TNLLM_ENGINE_SLOTS="1", TNLLM_DEBUG_FAULTS="1")
    stack.start_worker("w1")
    jobs = producer_for(stack)
    blocker = jobs.submit("blocker", max_new_tokens=2, metadata=debug(delay=1.5))
    deadline = time.monotonic() + 30
    while (rec := jobs.store.get(blocker)) is None or rec.status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    low = [jobs.submit(f"low {i}", max_new_tokens=2, priority=0) for i in range(20)]
    high = jobs.submit("high", max_new_tokens=2, priority=9)
    records = {r.id: r for r in jobs.wait_all([blocker, *low, high], timeout=90)}
    assert all(r.status is JobStatus.SUCCEEDED for r in records.values())
    high_start = records[high].started_at
    assert high_start is not None
    assert all(high_start < records[i].started_at for i in low)  # type: ignore[operator]
    # and the low ones ran first-come-first-served among themselves
    starts = [records[i].started_at for i in low]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_sigkilled_worker_jobs_finish_on_another_worker_once(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    stack = stack_factory(redis_url, TNLLM_ENGINE_SLOTS="4", TNLLM_DEBUG_FAULTS="1")
    w1 = stack.start_worker("w1")
    jobs = producer_for(stack)
    ids = [jobs.submit(f"job {i}", max_new_tokens=6, metadata=debug(delay=2.0)) for i in range(4)]
    deadline = time.monotonic() + 30
    while not all((r := jobs.store.get(i)) is not None and r.status is JobStatus.RUNNING for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    owners = [(r.lease_owner or "") if (r := jobs.store.get(i)) else "" for i in ids]
    assert all(owner.startswith("w1@test") for owner in owners), owners
    killed_at = time.monotonic()
    w1.signal(signal.SIGKILL)  # as the OOM killer would: no ack, no cleanup, leases left to expire
    stack.start_worker("w2")  # the replacement (a restarted or second worker)
    records = jobs.wait_all(ids, timeout=60)
    assert time.monotonic() - killed_at < 60
    for record in records:
        assert record.status is JobStatus.SUCCEEDED, record
        assert record.attempt == 2 and (record.lease_owner or "").startswith("w2@test")
        assert len(jobs.done_entries(record.id)) == 1  # the result was written exactly once


def test_time_limit_and_crash_loop(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    stack = stack_factory(
        redis_url, TNLLM_ENGINE_SLOTS="4", TNLLM_DEBUG_FAULTS="1", TNLLM_JOB_TIME_LIMIT="2",
        TNLLM_MAX_ATTEMPTS="2",
    )  # fmt: skip
    workers = [stack.start_worker("w1"), stack.start_worker("w2")]
    jobs = producer_for(stack)
    slow = jobs.submit("too slow", max_new_tokens=4, metadata=debug(delay=6))
    (timed_out,) = jobs.wait_all([slow], timeout=30)
    assert timed_out.status is JobStatus.FAILED and timed_out.error is not None
    assert timed_out.error.type == "timeout" and timed_out.attempt == 1
    crasher = jobs.submit("poison", max_new_tokens=4, metadata=debug(crash=True))
    deadline = time.monotonic() + 30
    while all(w.alive for w in workers):  # its first run kills one worker...
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # ...then other jobs arrive; they share workers with the poison job's later runs (and may be
    # killed with it once), yet they all succeed while the poison job fails with worker_lost.
    normal = [jobs.submit(f"fine {i}", max_new_tokens=4) for i in range(6)]

    def revive() -> None:  # what a supervisor (`tnllm up`, systemd, k8s) does for dead workers
        for i, child in enumerate(workers):
            if not child.alive:
                child.stop(0)  # reap it and close its log
                stack.children.remove(child)
                workers[i] = stack.start_worker(child.name, wait=False)

    records = {r.id: r for r in jobs.wait_all([crasher, *normal], timeout=90, on_tick=revive)}
    assert records[crasher].status is JobStatus.FAILED and records[crasher].error is not None
    assert records[crasher].error.type == "worker_lost" and records[crasher].attempt == 2
    assert all(records[i].status is JobStatus.SUCCEEDED for i in normal)
    # the timed-out job was not run again (its lease and the reaper had plenty of time since)
    again = jobs.store.get(slow)
    assert again is not None and again.status is JobStatus.FAILED and again.attempt == 1


def test_redis_sigkill_with_100_queued_and_repeated_restarts(
    redis_factory: Callable[..., RedisServer],
    stack_factory: Callable[..., Stack],
    producer_for: Callable[[Stack], Producer],
) -> None:
    redis = redis_factory()
    stack = stack_factory(redis.url, TNLLM_ENGINE_SLOTS="8")
    jobs = producer_for(stack)
    ids = [jobs.submit(f"queued {i}", max_new_tokens=3) for i in range(100)]
    time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
    redis.kill()
    redis.start()
    stack.start_worker("w1")
    records = jobs.wait_all(ids, timeout=120)
    assert all(r.status is JobStatus.SUCCEEDED and r.attempt == 1 for r in records)
    for _ in range(3):  # several outages in a row while the worker runs
        redis.kill()
        time.sleep(0.5)
        redis.start()
        time.sleep(0.5)
    job = jobs.submit("after the outages", max_new_tokens=3)
    (record,) = jobs.wait_all([job], timeout=60)
    assert record.status is JobStatus.SUCCEEDED


def test_warm_shutdown_puts_a_long_job_back_on_the_queue(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    stack = stack_factory(redis_url, TNLLM_DEBUG_FAULTS="1", TNLLM_WORKER_SHUTDOWN_GRACE="1")
    w1 = stack.start_worker("w1")
    jobs = producer_for(stack)
    quick = jobs.submit("quick", max_new_tokens=2)
    long = jobs.submit("long", max_new_tokens=2, metadata=debug(delay=30))
    deadline = time.monotonic() + 30
    while (rec := jobs.store.get(long)) is None or rec.status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert w1.stop(timeout=30) == 0  # SIGTERM: Celery's warm shutdown, then our grace runs out
    record = jobs.store.get(long)
    assert record is not None and record.status is JobStatus.QUEUED  # back on the queue at once
    stack.start_worker("w2", TNLLM_DEBUG_FAULTS="0")  # a worker that ignores the debug delay
    records = jobs.wait_all([quick, long], timeout=60)
    assert all(r.status is JobStatus.SUCCEEDED for r in records)
    # a released run does not count as an attempt
    assert records[1].attempt == 1 and (records[1].lease_owner or "").startswith("w2@test")


def test_a_worker_whose_model_fails_to_load_exits_non_zero(
    redis_url: str, stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(redis_url)
    child = stack.start_worker("broken", wait=False, TNLLM_MODEL=str(tmp_path / "no-such-model"))
    assert child.wait(timeout=60) == EXIT_MODEL_LOAD_FAILED, child.log_tail()
    assert "failed to load" in child.log_tail(80)


def test_a_dead_engine_process_restarts_the_worker_and_its_jobs_run_again(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    """The engine process dies (CUDA fault, OOM kill) under running jobs: the worker exits with
    EXIT_ENGINE_LOST for its supervisor to restart, writes nothing for those jobs, and the reaper
    requeues them (an attempt counted); they then finish on the next worker."""
    stack = stack_factory(redis_url, TNLLM_ENGINE_SLOTS="4")
    w1 = stack.start_worker("w1")
    assert w1.process is not None
    (engine_pid,) = child_pids(w1.process.pid)
    jobs = producer_for(stack)
    ids = [jobs.submit(f"long {i}", max_new_tokens=4000) for i in range(2)]
    deadline = time.monotonic() + 30
    while not all((r := jobs.store.get(i)) is not None and r.status is JobStatus.RUNNING for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(engine_pid, signal.SIGKILL)
    assert w1.wait(timeout=30) == EXIT_ENGINE_LOST, w1.log_tail(40)
    assert "the engine process exited" in w1.log_tail(80)
    for job_id in ids:  # nothing was written: not failed, still leased to the dead worker
        record = jobs.store.get(job_id)
        assert record is not None and record.status is JobStatus.RUNNING and record.attempt == 1
    stack.start_worker("w2")
    records = jobs.wait_all(ids, timeout=90)
    for record in records:
        assert record.status is JobStatus.SUCCEEDED and record.attempt == 2, record
        assert (record.lease_owner or "").startswith("w2@test")


def test_the_engine_on_a_thread_of_the_worker_serves_too(
    redis_url: str, stack_factory: Callable[..., Stack], producer_for: Callable[[Stack], Producer]
) -> None:
    """``engine_process=false``: no child process, the same service."""
    stack = stack_factory(redis_url, TNLLM_ENGINE_SLOTS="4", TNLLM_ENGINE_PROCESS="false")
    w1 = stack.start_worker("w1")
    assert w1.process is not None and child_pids(w1.process.pid) == []
    jobs = producer_for(stack)
    records = jobs.wait_all([jobs.submit(f"job {i}", max_new_tokens=5) for i in range(3)], timeout=60)
    assert all(r.status is JobStatus.SUCCEEDED and r.result and r.result.usage.completion_tokens == 5
               for r in records)  # fmt: skip
