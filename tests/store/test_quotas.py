"""Per-key limits in Redis (``admit.lua``): the sliding submission window, the daily token quota
fed by the finish path, and refusals that count nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tnllm.config import Settings
from tnllm.store import GenerationParams, JobResult, JobStatus, JobStore, Usage, keys, quotas
from tnllm.store.quotas import Verdict


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    s = JobStore.from_settings(Settings(redis_url=redis_url))
    yield s
    s.client.close()


def _admit(store: JobStore, now: float, member: str, rate: int = 3, quota: int = 0) -> quotas.Admission:
    raw: Any = store._run(quotas.admit_call("o", member, now, rate, quota))
    return quotas.parse_admit(raw, now)


def test_sliding_window(store: JobStore) -> None:
    t0 = 1_000_000.0
    for i in range(3):
        assert _admit(store, t0 + i, f"j{i}").allowed
    refused = _admit(store, t0 + 3, "j3")
    assert refused.verdict is Verdict.RATE and refused.submissions == 3
    assert refused.rate_reset_s == pytest.approx(57)  # when j0 leaves the window
    assert store.client.zcard(keys.rate("o")) == 3  # the refusal was not counted
    assert not _admit(store, t0 + 59.9, "j4").allowed
    again = _admit(store, t0 + 60.5, "j5")  # j0 left; j1, j2 and j5 are in
    assert again.allowed and again.submissions == 3
    assert 0 < store.client.ttl(keys.rate("o")) <= 61
    assert _admit(store, t0 + 61, "other", rate=0).allowed  # 0: off


def test_quota_refuses_without_counting_the_submission(store: JobStore) -> None:
    now = 1_000_000.0
    store.client.set(keys.usage("o", quotas.day(now)), 100)
    assert _admit(store, now, "a", quota=101).allowed
    refused = _admit(store, now, "b", quota=100)
    assert refused.verdict is Verdict.TOKENS and refused.tokens_used == 100
    assert refused.quota_reset_s == pytest.approx(quotas.DAY_S - now % quotas.DAY_S)
    assert store.client.zcard(keys.rate("o")) == 1  # only "a"
    assert _admit(store, now + quotas.DAY_S, "c", quota=100).allowed  # a new day


def test_finished_jobs_add_their_completion_tokens_to_the_owners_day(store: JobStore) -> None:
    for i, (status, tokens) in enumerate([(JobStatus.SUCCEEDED, 7), (JobStatus.CANCELLED, 5)]):
        job_id = f"q{i}"
        params = GenerationParams(prompt="p", max_new_tokens=8)
        assert store.create(job_id=job_id, owner="o", params=params).kind == "created"
        assert store.claim(job_id, "w").won
        usage = Usage(prompt_tokens=3, completion_tokens=tokens)
        result = JobResult(text="x", finish_reason="length", usage=usage)
        assert store.finish(job_id, "w", status, result=result, now=1_000_000.0 + i)
    key = keys.usage("o", quotas.day(1_000_000.0))
    assert store.client.get(key) == "12" and 0 < store.client.ttl(key) <= quotas.USAGE_TTL_S
    refused = _admit(store, 1_000_002.0, "next", quota=12)
    assert refused.verdict is Verdict.TOKENS and refused.tokens_used == 12
