"""Heartbeat and reaper of a worker runtime against a real Redis (no model needed for these)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tnllm.config import Settings
from tnllm.protocol.celery import broker_lists, send_generate
from tnllm.protocol.tasks import GENERATE_QUEUE, broker_priority
from tnllm.store import GenerationParams, JobStatus, JobStore, keys
from tnllm.worker.orphans import (
    UNACKED,
    UNACKED_INDEX,
    generate_job_id,
    message_job_id,
    resend_messageless,
)
from tnllm.worker.reaper import REAPER_LOCK
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # Reaper.gap = lease_ttl - renew interval = 4.8 s: a slow step between two rounds of one test
    # (a first Celery send on a loaded machine) is not taken for an outage (see the gap test)
    return Settings(
        redis_url=redis_url, lease_ttl=5.0, lease_renew_interval=0.2, reaper_interval=0.2, max_attempts=2
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime(settings, hostname="test@host")
    yield rt
    rt.close()


def _create(store: JobStore, job_id: str, priority: int = 0) -> None:
    out = store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="hi"), priority=priority)
    assert out.kind == "created"


def _messages(store: JobStore, list_key: str) -> list[str]:
    """Job ids of the GENERATE_TASK messages waiting in one broker list (decoded from the body)."""
    return [str(message_job_id(json.loads(m))) for m in store.client.lrange(list_key, 0, -1)]


def test_reaper_requeues_then_fails_with_worker_lost(runtime: WorkerRuntime) -> None:
    store = runtime.store
    _create(store, "j1", priority=7)
    for attempt in (1, 2):
        assert store.claim("j1", "dead-worker").won
        store.client.delete(keys.lease("j1"))  # the worker died: its lease is gone
        store.client.delete(REAPER_LOCK)
        done = runtime.reaper.reap_once()
        if attempt == 1:
            assert done == [("j1", "requeued")]
            record = store.get("j1")
            assert record is not None and record.status is JobStatus.QUEUED
            # a new Celery message at the job's priority: broker priority 9 - 7 = 2
            assert _messages(store, broker_lists(GENERATE_QUEUE)[2]) == ["j1"]
    assert done == [("j1", "failed")]
    record = store.get("j1")
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.type == "worker_lost"


def test_reaper_leaves_live_leases_and_takes_turns(runtime: WorkerRuntime, settings: Settings) -> None:
    store = runtime.store
    _create(store, "j2")
    assert store.claim("j2", "alive-worker").won
    assert runtime.reaper.reap_once() == []
    other = WorkerRuntime(settings, hostname="other@host")
    try:
        store.client.delete(keys.lease("j2"))
        # the first runtime holds this round's lock: the other one does nothing
        assert other.reaper.reap_once() == []
        store.client.delete(REAPER_LOCK)
        assert other.reaper.reap_once() == [("j2", "requeued")]
    finally:
        other.close()


def test_heartbeat_renews_leases_and_reports_lost_and_cancel(runtime: WorkerRuntime) -> None:
    store = runtime.store
    for job_id in ("a", "b"):
        _create(store, job_id)
        assert store.claim(job_id, runtime.worker_id).won
    a, b = runtime.track("a"), runtime.track("b")
    store.client.pexpire(keys.lease("a"), 200)
    store.cancel("a")
    store.client.hset(keys.job("b"), "lease_owner", "someone-else")
    runtime.heartbeat_once()
    assert store.client.pttl(keys.lease("a")) > 500
    assert a.cancel.is_set() and not a.lost.is_set()
    assert b.lost.is_set()
    workers = store.workers()
    assert [w.id for w in workers] == [runtime.worker_id]
    assert workers[0].model_loaded is False and workers[0].slots == 0


def test_reaper_resends_messages_parked_with_a_dead_worker(runtime: WorkerRuntime) -> None:
    store = runtime.store
    for job_id in ("queued-1", "done-1"):
        _create(store, job_id, priority=9)
        runtime.send_generate(job_id, 9)
    # a worker took both messages off the queue (kombu parks them in `unacked`) and died
    parked = [store.client.rpop("generate") for _ in range(2)]
    assert store.client.llen("generate") == 0 and all(parked)
    for tag, message in zip(("tag-1", "tag-2"), parked, strict=True):
        store.client.hset(UNACKED, tag, json.dumps([json.loads(message), "generate", "generate"]))
        store.client.zadd(UNACKED_INDEX, {tag: time.time() - 60})
    assert generate_job_id(store.client.hget(UNACKED, "tag-1")) == "queued-1"
    assert store.claim("done-1", "w").won and store.finish("done-1", "w", JobStatus.SUCCEEDED)
    assert runtime.reaper.reap_once() == [("queued-1", "resent")]
    assert _messages(store, "generate") == ["queued-1"]  # sent again at its priority
    assert store.client.hlen(UNACKED) == 0 and store.client.zcard(UNACKED_INDEX) == 0
    store.client.delete(REAPER_LOCK)
    assert runtime.reaper.reap_once() == []  # once only


def test_reaper_sends_a_message_for_queued_jobs_that_have_none(runtime: WorkerRuntime) -> None:
    store = runtime.store
    _create(store, "with-message", priority=9)
    runtime.send_generate("with-message", 9)
    _create(store, "lost", priority=9)  # its message vanished with a worker killed mid-BRPOP
    assert resend_messageless(store, runtime.send_generate, min_age=60) == []  # too young to judge
    assert resend_messageless(store, runtime.send_generate, min_age=0) == ["lost"]
    assert sorted(_messages(store, "generate")) == ["lost", "with-message"]
    assert resend_messageless(store, runtime.send_generate, min_age=0) == []
    # a running job's un-acked message does not hide a queued job that has none
    _create(store, "running")
    assert store.claim("running", "w").won
    store.client.hset(UNACKED, "tag-r", "[]")
    _create(store, "lost-2")
    assert resend_messageless(store, runtime.send_generate, min_age=0) == ["lost-2"]


def test_hostname_is_expanded_as_celery_does(settings: Settings) -> None:
    """`tnllm up` passes --hostname gpu0@%h: heartbeats must carry the real node name, as Celery's."""
    import socket

    host = socket.gethostname()
    cases = {"gpu0@%h": f"gpu0@{host}", "gpu1@%n": f"gpu1@{host.partition('.')[0]}", "plain": "celery@plain"}
    for given, expected in cases.items():
        rt = WorkerRuntime(settings, hostname=given)
        try:
            assert rt.hostname == expected
            assert rt.worker_id.startswith(f"{expected}:")
            rt.heartbeat_once()
            assert expected in [w.hostname for w in rt.store.workers()]
        finally:
            rt.close()


def test_after_a_gap_in_the_rounds_leases_are_judged_only_after_a_grace(redis_url: str) -> None:
    """No reaper round for longer than ``Reaper.gap`` (Redis was unreachable) makes every reaper
    wait one lease_ttl: a live worker renews its expired lease meanwhile and keeps its job; the job
    of a worker that did not come back is requeued when the grace ends."""
    settings = Settings(redis_url=redis_url, lease_ttl=3.0, lease_renew_interval=0.5, reaper_interval=0.2)
    runtime = WorkerRuntime(settings, hostname="test@host")
    other = WorkerRuntime(settings, hostname="other@host")
    store, reaper = runtime.store, runtime.reaper
    try:
        for job_id in ("alive", "dead"):
            _create(store, job_id)
            assert store.claim(job_id, f"{job_id}-worker").won
        assert reaper.reap_once() == []  # both leases current; this round sets the clock
        for job_id in ("alive", "dead"):
            store.client.delete(keys.lease(job_id))  # expired during the "outage"
        time.sleep(reaper.gap + 0.2)  # no reaper round reached Redis for longer than the gap
        store.client.delete(REAPER_LOCK)
        assert reaper.reap_once() == []  # grace: nothing judged
        grace_started = time.monotonic()
        assert store.renew_lease("alive", "alive-worker").owned  # the live worker's renewal resumes
        assert other.reaper.reap_once() == []  # every worker's reaper waits, not only the one that saw it
        deadline = time.monotonic() + settings.lease_ttl + 2
        done: list[tuple[str, str]] = []
        while not done:
            assert time.monotonic() < deadline, "the grace never ended"
            time.sleep(0.1)
            store.renew_lease("alive", "alive-worker")
            store.client.delete(REAPER_LOCK)
            done = other.reaper.reap_once()
        assert done == [("dead", "requeued")]
        assert time.monotonic() - grace_started > 0.8 * settings.lease_ttl
        alive = store.get("alive")
        assert alive is not None and alive.status is JobStatus.RUNNING and alive.attempt == 1
    finally:
        other.close()
        runtime.close()


def test_a_continuation_waiting_in_a_dead_workers_own_queue_is_sent_to_the_shared_one(
    runtime: WorkerRuntime,
) -> None:
    """A continuation is routed to the queue of the worker holding its state; while that worker's
    heartbeat is live its message counts as present, once the worker is gone it is resent."""
    store = runtime.store
    own = broker_lists(runtime.own_queue)
    _create(store, "turn-2", priority=3)
    send_generate(runtime.app, "turn-2", 3, queue=runtime.own_queue)
    assert _messages(store, own[broker_priority(3)]) == ["turn-2"]
    runtime.heartbeat_once()  # live: its own queue is listed in its heartbeat
    assert runtime.own_queue in store.workers()[0].queues
    assert resend_messageless(store, runtime.send_generate, min_age=0) == []
    store.remove_worker(runtime.worker_id)  # the worker died
    assert resend_messageless(store, runtime.send_generate, min_age=0) == ["turn-2"]
    assert _messages(store, broker_lists(GENERATE_QUEUE)[broker_priority(3)]) == ["turn-2"]
