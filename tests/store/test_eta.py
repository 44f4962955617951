"""ETAs from the workers' step times and the work ahead, on a real redis-server (exact numbers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tnllm.config import Settings
from tnllm.store import GenerationParams, JobStore, WorkerInfo
from tnllm.store.eta import schedule


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    s = JobStore.from_settings(Settings(redis_url=redis_url, lease_ttl=2.0, lease_renew_interval=0.5))
    yield s
    s.client.close()


def _job(store: JobStore, job_id: str, tokens: int, priority: int = 0) -> None:
    params = GenerationParams(prompt="p", max_new_tokens=tokens)
    assert store.create(job_id=job_id, owner="o", params=params, priority=priority).kind == "created"


def test_schedule_is_a_list_schedule_on_the_slot_that_frees_first() -> None:
    assert schedule([0.0, 0.0], [], 3.0) == (0.0, 3.0)
    assert schedule([1.0, 4.0], [2.0, 2.0], 1.0) == (4.0, 5.0)  # 1→3, 3→5 on slot 1; slot 2 at 4
    assert schedule([], [1.0], 1.0) == (1.0, 2.0)  # no slot known: one


def test_queued_and_running_jobs_get_their_estimates(store: JobStore) -> None:
    assert store.eta("nope") is None
    _job(store, "run1", 100)
    _job(store, "run2", 40)
    _job(store, "q1", 30)
    _job(store, "q2", 10, priority=5)  # ahead of q1
    _job(store, "q3", 20)
    assert store.eta("q1") is None  # no live worker: no estimate
    store.heartbeat_worker(WorkerInfo(id="w", model_loaded=True, slots=2, step_time_s=0.1), ttl=30)
    assert store.claim("run1", "w").won and store.claim("run2", "w").won
    store.append_many("w", {"run1": "x"}, {"run1": 1}, {"run1": list(range(20))})  # 20 streamed
    # slots free at 80 * 0.1 = 8 s (run1) and 40 * 0.1 = 4 s (run2); queue: q2 (p5), q1, q3
    expected = {"q2": (0, 4.0, 5.0), "q1": (1, 5.0, 8.0), "q3": (2, 8.0, 10.0)}
    for job_id, (rank, start, finish) in expected.items():
        eta = store.eta(job_id)
        assert eta is not None and eta.queue_position == rank, job_id
        assert (eta.start_s, eta.finish_s) == pytest.approx((start, finish)), job_id
    running = store.eta("run1")
    assert running is not None and running.queue_position is None
    assert running.finish_s == pytest.approx(8.0)
