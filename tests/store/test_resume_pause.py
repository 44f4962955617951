"""Stream token ids (crash resume) and the pause / resume / park transitions on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tnllm.config import Settings
from tnllm.protocol.jobs import JobRecord
from tnllm.protocol.outputs import ChoiceDelta, TokenLogprob
from tnllm.store import AsyncJobStore, GenerationParams, JobStatus, JobStore, async_redis_client, keys
from tnllm.store.entries import pack_deltas
from tnllm.store.pause import PauseKind
from tnllm.store.resume import job_sampling, resumable, streamed_ids


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, result_ttl=600, lease_ttl=2.0, lease_renew_interval=0.5)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore.from_settings(settings)
    yield s
    s.client.close()


def _create(store: JobStore, job_id: str, priority: int = 0) -> None:
    assert (
        store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="p"), priority=priority).kind
        == "created"
    )


def test_token_ids_travel_with_their_text_and_survive_a_requeue(store: JobStore) -> None:
    _create(store, "j")
    assert store.claim("j", "w1").won
    store.append("j", "w1", "He", seq=1, ids=[5, 6])
    acks = store.append_many("w1", {"j": ""}, {"j": 2}, {"j": [7]})  # held-back text: ids alone
    assert acks["j"].written and acks["j"].owned
    store.append_many("w1", {"j": "llo"}, {"j": 3}, {"j": [8, 9]})
    store.client.delete(keys.lease("j"))  # w1 died
    assert store.reap("j").action == "requeued"
    entries = store.streamed("j")
    assert [e.type for e in entries] == ["token"] * 3  # no reset: the next attempt resumes
    assert streamed_ids(entries) == [5, 6, 7, 8, 9]
    assert "".join(e.text for e in entries) == "Hello"
    assert store.claim("j", "w2").won
    assert store.reset_stream("j", "w2", "not_resumable") and not store.reset_stream("j", "w1", "x")
    assert streamed_ids(store.streamed("j")) == []  # a reset voids what came before


def test_an_entry_keeps_choice_0s_ids_beside_its_per_choice_deltas(store: JobStore) -> None:
    _create(store, "n2")
    assert store.claim("n2", "w1").won
    lp = TokenLogprob(token="a", token_id=5, logprob=-0.5, bytes=[97], top_logprobs=[])
    parts = [ChoiceDelta(index=0, text="a", logprobs=[lp]), ChoiceDelta(index=1, text="b")]
    text, deltas = pack_deltas(parts)
    store.append("n2", "w1", text, seq=1, deltas=deltas, ids=[5])
    text, deltas = pack_deltas([ChoiceDelta(index=1, text="c")])
    store.append_many("w1", {"n2": text}, {"n2": 2}, {"n2": [6]}, {"n2": deltas})
    first, second = store.streamed("n2")
    assert first.ids == (5,) and first.deltas == tuple(parts) and first.text == "a"
    assert second.ids == (6,) and second.deltas == (ChoiceDelta(index=1, text="c"),) and second.text == ""
    assert streamed_ids([first, second]) == [5, 6]


def test_which_jobs_resume_and_with_which_seed() -> None:
    def record(job_id: str, **kw: object) -> JobRecord:
        params = GenerationParams.model_validate({"prompt": "p", **kw})
        return JobRecord(
            id=job_id, owner="o", status=JobStatus.QUEUED, created_at=datetime.now(UTC), params=params
        )

    assert resumable(record("a")) and resumable(record("a", temperature=0.7))
    assert not resumable(record("a", n=2)) and not resumable(record("a", logprobs=True))
    hot = record("job-1", temperature=0.7)
    seed = job_sampling(hot).seed
    assert seed is not None and 0 <= seed < 2**63 and job_sampling(hot).seed == seed  # every attempt
    assert job_sampling(record("job-2", temperature=0.7)).seed != seed
    assert job_sampling(record("job-1", temperature=0.7, seed=4)).seed == 4
    assert job_sampling(record("job-1")).seed is None  # greedy: no draws
    assert hot.params.seed is None  # the record keeps what the client sent


def test_a_stream_without_ids_cannot_be_resumed(store: JobStore) -> None:
    _create(store, "old")
    assert store.claim("old", "w1").won
    store.append("old", "w1", "text of an older version")
    assert streamed_ids(store.streamed("old")) is None


def test_pause_resume_and_park(store: JobStore, settings: Settings) -> None:
    aio = AsyncJobStore(async_redis_client(settings.redis_url), settings)
    _create(store, "q")
    _create(store, "r")

    async def flow() -> None:
        assert (await aio.pause("q")).kind is PauseKind.PAUSED  # queued -> paused, out of the queue
        assert (await aio.pause("q")).kind is PauseKind.PAUSED  # idempotent
        assert store.queue_position("q") is None and not store.claim("q", "w").won
        assert (await aio.resume("q")).kind is PauseKind.QUEUED
        assert store.queue_position("q") == 0 and (await aio.resume("q")).kind is PauseKind.NOT_PAUSED
        assert store.claim("r", "w1").won
        assert (await aio.pause("r")).kind is PauseKind.REQUESTED
        ack = store.append_many("w1", {"r": ""})["r"]
        assert ack.pause_requested and not ack.cancel_requested
        assert store.park("r", "intruder").action == "not_owner"
        assert store.park("r", "w1").action == "paused"
        rec = store.get("r")
        assert rec is not None and rec.status is JobStatus.PAUSED and rec.attempt == 0
        assert not store.lease_alive("r") and store.expired_leases() == []
        assert (await aio.resume("r")).kind is PauseKind.QUEUED
        assert store.claim("r", "w2").won
        assert (await aio.pause("r")).kind is PauseKind.REQUESTED
        assert (await aio.resume("r")).kind is PauseKind.RUNNING  # withdrawn before the worker parked it
        assert store.park("r", "w2").action == "requeued"  # so the worker requeues instead
        assert (await aio.pause("r")).kind is PauseKind.PAUSED
        assert (await aio.cancel("r")).kind == "cancelled"  # a paused job cancels like a queued one
        assert (await aio.pause("r")).kind is PauseKind.TERMINAL
        await aio.client.aclose()

    asyncio.run(flow())
