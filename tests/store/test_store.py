"""The job store against a real redis-server: every transition, its fences and its TTLs."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tnllm.config import Settings
from tnllm.store import (
    GenerationParams,
    JobError,
    JobResult,
    JobStatus,
    JobStore,
    Usage,
    WorkerInfo,
    keys,
    ops,
    redis_client,
    scripts,
)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url, result_ttl=600, lease_ttl=2.0, lease_renew_interval=0.5, max_attempts=2
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore.from_settings(settings)
    yield s
    s.client.close()


def _create(store: JobStore, job_id: str, owner: str = "o", priority: int = 0, **kw: object) -> None:
    outcome = store.create(
        job_id=job_id, owner=owner, params=GenerationParams(prompt=f"p-{job_id}"), priority=priority, **kw
    )
    assert outcome.kind == "created", outcome


def test_create_get_and_ttls(store: JobStore) -> None:
    out = store.create(job_id="j1", owner="o", params=GenerationParams(prompt="p-j1"), metadata={"k": [1, 2]})
    assert out.kind == "created" and out.queue_position == 0
    rec = store.get("j1")
    assert rec is not None and out.record == rec  # the record as written, without reading it back
    assert rec.status is JobStatus.QUEUED and rec.owner == "o" and rec.metadata == {"k": [1, 2]}
    assert rec.params.prompt == "p-j1" and rec.attempt == 0 and rec.started_at is None
    for key in (keys.job("j1"), keys.owner_jobs("o"), keys.QUEUE):
        assert 0 < store.client.ttl(key) <= 600
    assert store.get("nope") is None


def test_claim_is_a_fence(store: JobStore) -> None:
    _create(store, "j1")
    results: list[bool] = []

    def claim(worker: str) -> None:
        results.append(store.claim("j1", worker).won)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    rec = store.get("j1")
    assert rec is not None and rec.status is JobStatus.RUNNING and rec.attempt == 1
    assert rec.started_at is not None and rec.lease_owner is not None
    assert store.lease_alive("j1") and store.queue_position("j1") is None
    lost = store.claim("j1", "late")
    assert not lost.won and lost.status is JobStatus.RUNNING
    assert store.claim("missing", "w").status is None


def test_claim_and_finish_recognise_their_own_replay(store: JobStore) -> None:
    """A client retry re-sends the very same call (same worker, same ``now``): it must not turn a
    claim or finish that ran into "lost"; a second delivery to the same worker still loses."""
    from tnllm.store import ops

    _create(store, "j1")
    call = ops.claim_call("j1", "w1", store.lease_ttl, store.ttl, 1000.5)
    first = ops.parse_claim(store._run(call))
    replay = ops.parse_claim(store._run(call))
    assert first.won and replay.won and first.attempt == replay.attempt == 1
    rec = store.get("j1")
    assert rec is not None and rec.attempt == 1  # the replay did not count another attempt
    again = ops.parse_claim(store._run(ops.claim_call("j1", "w1", store.lease_ttl, store.ttl, 1001.0)))
    assert not again.won and again.status is JobStatus.RUNNING  # a duplicate delivery, same worker
    assert not store.claim("j1", "w2").won
    _create(store, "j2")  # the store methods, as job_runner's retry loop calls them
    assert store.claim("j2", "w1", now=2000.0).won and store.claim("j2", "w1", now=2000.0).won
    assert not store.claim("j2", "w1").won
    result = JobResult(text="z", finish_reason="stop")
    assert store.finish("j2", "w1", JobStatus.SUCCEEDED, result=result, now=2001.0)
    assert store.finish("j2", "w1", JobStatus.SUCCEEDED, result=result, now=2001.0)
    assert not store.finish("j2", "w1", JobStatus.SUCCEEDED, result=result)
    done = ops.finish_call(
        "j1", "w1", JobStatus.SUCCEEDED, JobResult(text="x", finish_reason="stop"), None, store.ttl, 1002.0
    )
    assert store._run(done)[0] == 1 and store._run(done)[0] == 1
    late = ops.finish_call(
        "j1", "w1", JobStatus.SUCCEEDED, JobResult(text="y", finish_reason="stop"), None, store.ttl, 1003.0
    )
    assert store._run(late)[0] == 0  # not a replay: the job is already terminal
    rec = store.get("j1")
    assert rec is not None and rec.status is JobStatus.SUCCEEDED and rec.result is not None
    assert rec.result.text == "x"


class _RedisRelay:
    """A real TCP relay to Redis on ``url``: each accepted client gets its own upstream connection
    (refused, the client is closed: Redis is down, so is the relay); subclasses move the bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class _SilentDeathProxy(_RedisRelay):
    """A relay whose ``sever()`` makes every open connection die the way one does when the server's
    host restarts: no FIN reaches the client (so redis-py's pool cannot see it), and the next
    request is answered with a reset. New connections are relayed normally."""

    def __init__(self, port: int) -> None:
        self.pairs: list[tuple[socket.socket, socket.socket, list[bool]]] = []
        super().__init__(port)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = (client, upstream, [False])
        self.pairs.append(pair)
        threading.Thread(target=self._up, args=pair, daemon=True).start()
        threading.Thread(target=self._down, args=pair, daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, dead: list[bool]) -> None:
        while data := _recv(client):
            if dead[0]:  # the "rebooted host" answers with a reset
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            upstream.sendall(data)
        client.close()

    def _down(self, client: socket.socket, upstream: socket.socket, dead: list[bool]) -> None:
        while data := _recv(upstream):
            client.sendall(data)
        if not dead[0]:
            client.close()

    def sever(self) -> None:
        for _, upstream, dead in self.pairs:
            dead[0] = True
            upstream.close()
        self.pairs.clear()

    def close(self) -> None:
        self.sever()
        super().close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_sync_client_retries_a_connection_that_died_silently(redis_factory, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """A pooled connection killed without a FIN (server host restarted, failover) fails on its next
    command: the store retries on a fresh connection instead of raising (as the API's client does)."""
    server = redis_factory()
    proxy = _SilentDeathProxy(server.port)
    store = JobStore.from_settings(settings.model_copy(update={"redis_url": proxy.url}))
    try:
        _create(store, "j1")
        proxy.sever()
        outcome = store.claim("j1", "w1")  # first command on the dead pooled connection
        assert outcome.won and outcome.attempt == 1
        proxy.sever()
        assert store.finish(
            "j1", "w1", JobStatus.SUCCEEDED, result=JobResult(text="ok", finish_reason="stop")
        )
        server.stop()
        server.start()  # a plain restart (the pool notices the closed socket itself) works too
        rec = store.get("j1")
        assert rec is not None and rec.status is JobStatus.SUCCEEDED
        server.kill()
        with pytest.raises(redis.ConnectionError):  # down for good: the retries give up, quickly
            store.get("j1")
    finally:
        store.client.close()
        proxy.close()


def test_stream_append_finish_and_duplicate_delivery(store: JobStore) -> None:
    _create(store, "j1")
    assert store.claim("j1", "w1").won
    ids = store.append("j1", "w1", "Hel", "lo")
    assert len(ids) == 2
    assert store.append("j1", "intruder", "x") == []  # only the lease owner writes
    result = JobResult(text="Hello", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2))
    assert not store.finish("j1", "intruder", JobStatus.SUCCEEDED, result=result)
    assert store.finish("j1", "w1", JobStatus.SUCCEEDED, result=result)
    assert not store.finish("j1", "w1", JobStatus.FAILED)  # terminal is final
    assert not store.claim("j1", "w2").won  # a redelivered message finds it terminal
    rec = store.get("j1")
    assert rec is not None and rec.status is JobStatus.SUCCEEDED and rec.result == result
    assert rec.finished_at is not None and not store.lease_alive("j1")
    entries = store.read_stream("j1")
    assert [(e.type, e.text) for e in entries] == [("token", "Hel"), ("token", "lo"), ("done", "")]
    assert entries[-1].status is JobStatus.SUCCEEDED
    assert store.read_stream("j1", after=entries[0].id)[0].text == "lo"
    assert 0 < store.client.ttl(keys.stream("j1")) <= 600


def test_finish_publishes(store: JobStore, settings: Settings) -> None:
    _create(store, "j1")
    store.claim("j1", "w")
    sub = redis_client(settings.redis_url or "").pubsub(ignore_subscribe_messages=True)
    sub.subscribe(keys.FINISHED_CHANNEL)
    store.finish("j1", "w", JobStatus.FAILED, error=JobError(type="timeout", message="too slow"))
    deadline = time.monotonic() + 5
    msg = None
    while msg is None and time.monotonic() < deadline:
        msg = sub.get_message(timeout=1)
    sub.close()
    assert msg is not None and msg["data"] == "j1"
    rec = store.get("j1")
    assert rec is not None and rec.error is not None and rec.error.type == "timeout"


def test_cancel_queued_running_terminal(store: JobStore) -> None:
    _create(store, "q")
    out = store.cancel("q")
    assert out.kind == "cancelled"
    rec = store.get("q")
    assert rec is not None and rec.status is JobStatus.CANCELLED and rec.finished_at is not None
    assert not store.claim("q", "w").won  # the task arriving later skips it
    assert store.read_stream("q")[-1].type == "done"

    _create(store, "r")
    store.claim("r", "w")
    assert store.cancel("r").kind == "requested"
    assert store.cancel_requested("r")
    assert store.renew_lease("r", "w").cancel_requested
    partial = JobResult(text="par", finish_reason="cancelled")
    assert store.finish("r", "w", JobStatus.CANCELLED, result=partial)
    out = store.cancel("r")
    assert out.kind == "terminal" and out.status is JobStatus.CANCELLED
    assert store.cancel("missing").kind == "missing"


def test_lease_renew_and_reap(store: JobStore) -> None:
    _create(store, "j1")
    store.claim("j1", "w1")
    assert store.renew_lease("j1", "w1").owned
    assert not store.renew_lease("j1", "other").owned
    assert store.expired_leases() == []
    assert store.reap("j1").action == "alive"
    store.client.delete(keys.lease("j1"))  # the worker died: its lease is gone
    assert store.expired_leases() == ["j1"]
    out = store.reap("j1")
    assert out.action == "requeued" and out.attempt == 1
    rec = store.get("j1")
    assert rec is not None and rec.status is JobStatus.QUEUED and rec.started_at is None
    assert store.queue_position("j1") == 0
    assert not store.finish("j1", "w1", JobStatus.SUCCEEDED)  # the old owner lost it
    assert store.append("j1", "w1", "x") == []
    assert [e.type for e in store.read_stream("j1")] == []  # no reset: the next attempt resumes
    # second attempt dies too: max_attempts=2 -> failed with worker_lost
    assert store.claim("j1", "w2").attempt == 2
    store.client.delete(keys.lease("j1"))
    assert store.reap("j1").action == "failed"
    rec = store.get("j1")
    assert rec is not None and rec.status is JobStatus.FAILED
    assert rec.error is not None and rec.error.type == "worker_lost"
    assert store.reap("j1").action == "skipped" and store.expired_leases() == []


def test_lease_expires_by_ttl(store: JobStore) -> None:
    _create(store, "j1")
    store.claim("j1", "w1")
    assert 0 < store.client.pttl(keys.lease("j1")) <= 2000
    store.client.pexpire(keys.lease("j1"), 50)
    time.sleep(0.15)
    assert store.expired_leases() == ["j1"]


def test_reap_cancel_requested_and_release(store: JobStore) -> None:
    _create(store, "c")
    store.claim("c", "w")
    store.cancel("c")
    store.client.delete(keys.lease("c"))
    assert store.reap("c").action == "cancelled"
    _create(store, "r")
    store.claim("r", "w")
    assert store.release("r", "other").action == "not_owner"
    assert store.release("r", "w").action == "requeued"
    rec = store.get("r")
    assert rec is not None and rec.status is JobStatus.QUEUED and rec.attempt == 0


def test_queue_order_priority_then_fifo(store: JobStore) -> None:
    _create(store, "low1", priority=0)
    time.sleep(0.002)
    _create(store, "low2", priority=0)
    _create(store, "high", priority=9)
    assert [store.queue_position(j) for j in ("high", "low1", "low2")] == [0, 1, 2]
    assert store.queue_depth() == 3
    store.claim("high", "w")
    assert store.queue_position("low1") == 0 and store.queue_depth() == 2


def test_queue_limit(store: JobStore) -> None:
    for i in range(3):
        out = store.create(job_id=f"j{i}", owner="o", params=GenerationParams(prompt="x"), max_queued=3)
        assert out.kind == "created"
    out = store.create(job_id="j9", owner="o", params=GenerationParams(prompt="x"), max_queued=3)
    assert out.kind == "full" and out.queue_depth == 3 and store.get("j9") is None


def test_idempotency_replay_and_conflict(store: JobStore) -> None:
    kw = {"owner": "o", "params": GenerationParams(prompt="x"), "idempotency_key": "k1"}
    assert store.create(job_id="a", body_hash="h1", **kw).kind == "created"  # type: ignore[arg-type]
    again = store.create(job_id="b", body_hash="h1", **kw)  # type: ignore[arg-type]
    assert again.kind == "replayed" and again.job_id == "a" and store.get("b") is None
    assert store.create(job_id="c", body_hash="h2", **kw).kind == "conflict"  # type: ignore[arg-type]
    other = store.create(job_id="d", owner="p", params=GenerationParams(prompt="x"), idempotency_key="k1")
    assert other.kind == "created"  # scoped per owner
    assert 0 < store.client.ttl(keys.idempotency("o", "k1")) <= 600  # min(24 h, result_ttl)


def _broker(job_id: str) -> list[tuple[str, str, str]]:
    return [("lpush", "generate:9", f"msg-{job_id}"), ("publish", "bench-events", f"sent-{job_id}")]


def test_create_writes_its_broker_message_once(store: JobStore) -> None:
    """CREATE runs the publish commands with the record: a created job has exactly one message; a
    replay, a conflict, a refusal (queue full) and a retried create (same id) push none."""
    events = store.client.pubsub()
    events.subscribe("bench-events")
    assert events.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    kw = {"owner": "o", "params": GenerationParams(prompt="x"), "idempotency_key": "k1", "max_queued": 2}
    assert store.create(job_id="a", body_hash="h1", broker=_broker("a"), **kw).kind == "created"  # type: ignore[arg-type]
    assert store.create(job_id="a", body_hash="h1", broker=_broker("a"), **kw).kind == "created"  # type: ignore[arg-type]
    assert store.create(job_id="b", body_hash="h1", broker=_broker("b"), **kw).kind == "replayed"  # type: ignore[arg-type]
    assert store.create(job_id="c", body_hash="h2", broker=_broker("c"), **kw).kind == "conflict"  # type: ignore[arg-type]
    plain = {"owner": "o", "params": GenerationParams(prompt="x"), "max_queued": 2}
    assert store.create(job_id="d", broker=_broker("d"), **plain).kind == "created"  # type: ignore[arg-type]
    assert store.create(job_id="e", broker=_broker("e"), **plain).kind == "full"  # type: ignore[arg-type]
    assert store.client.lrange("generate:9", 0, -1) == ["msg-d", "msg-a"]
    got = [m["data"] for m in iter(lambda: events.get_message(timeout=0.5), None) if m["type"] == "message"]
    events.close()
    assert got == ["sent-a", "sent-d"]
    with pytest.raises(ValueError, match="unsupported"):
        store.create(job_id="f", broker=[("del", "tnllm:queue", "")], **plain)  # type: ignore[arg-type]


def test_list_jobs_pagination_and_filter(store: JobStore) -> None:
    for i in range(7):
        _create(store, f"j{i}")
    _create(store, "other", owner="p")
    store.claim("j3", "w")
    store.claim("j5", "w")
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_jobs("o", limit=3, cursor=cursor)
        seen += [r.id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"j{i}" for i in reversed(range(7))]
    running = store.list_jobs("o", status=JobStatus.RUNNING)
    assert [r.id for r in running.records] == ["j5", "j3"] and running.next_cursor is None
    store.client.delete(keys.job("j6"))  # expired record: skipped and pruned from the index
    assert [r.id for r in store.list_jobs("o", limit=1).records] == ["j5"]
    assert store.client.zscore(keys.owner_jobs("o"), "j6") is None
    with pytest.raises(ValueError, match="cursor"):
        store.list_jobs("o", cursor="!!bad")


def test_worker_heartbeat(store: JobStore) -> None:
    assert store.workers() == []
    store.heartbeat_worker(WorkerInfo(id="w1", model="demo", model_loaded=True, slots=4), ttl=5)
    (w,) = store.workers()
    assert w.id == "w1" and w.model_loaded and w.slots == 4
    assert 0 < store.client.ttl(keys.worker("w1")) <= 5
    store.remove_worker("w1")
    assert store.workers() == []


def test_store_requires_decoded_client(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    with pytest.raises(ValueError, match="decode_responses"):
        JobStore(client, settings)
    client.close()


def test_create_replayed_by_a_client_retry_counts_as_created(store: JobStore) -> None:
    # A retried EVALSHA (connection lost after Redis ran it) finds its own job: still "created".
    params = GenerationParams(prompt="x")
    assert store.create(job_id="a", owner="o", params=params).kind == "created"
    assert store.create(job_id="a", owner="o", params=params).kind == "created"
    kw = {"owner": "o", "params": params, "idempotency_key": "k", "body_hash": "h"}
    assert store.create(job_id="b", **kw).kind == "created"  # type: ignore[arg-type]
    again = store.create(job_id="b", **kw)  # type: ignore[arg-type]
    assert again.kind == "created" and again.job_id == "b"
    assert store.queue_depth() == 2


def _texts(store: JobStore, job_id: str) -> list[str]:
    return [e.text for e in store.read_stream(job_id) if e.type == "token"]


def test_a_replayed_append_with_the_same_seq_writes_once(store: JobStore) -> None:
    """The client retry after a lost reply runs the script again with the same number: no-op."""
    _create(store, "j1")
    assert store.claim("j1", "w1").won
    first = store.append("j1", "w1", "Hel", seq=1)
    assert len(first) == 1 and first != [ops.ALREADY_APPLIED]
    assert store.append("j1", "w1", "Hel", seq=1) == [ops.ALREADY_APPLIED]  # reply lost, retried
    assert len(store.append("j1", "w1", "lo", seq=2)) == 1
    assert store.append("j1", "w1", "Hel", seq=1) == [ops.ALREADY_APPLIED]  # a late, older resend
    assert store.append("j1", "intruder", "x", seq=3) == []  # the fence still comes first
    assert _texts(store, "j1") == ["Hel", "lo"]
    assert len(store.append("j1", "w1", "!")) == 1  # unnumbered (seq 0): always written
    assert _texts(store, "j1") == ["Hel", "lo", "!"]


def test_a_replayed_append_many_with_the_same_seqs_writes_once(store: JobStore) -> None:
    for job_id in ("a", "b"):
        _create(store, job_id)
        assert store.claim(job_id, "w1").won
    acks = store.append_many("w1", {"a": "x", "b": "y"}, {"a": 1, "b": 1})
    assert all(a.owned and a.written for a in acks.values())
    # the reply was lost: the retry carries the same texts and numbers, and says "written" again
    again = store.append_many("w1", {"a": "x", "b": "y"}, {"a": 1, "b": 1})
    assert all(a.owned and a.written for a in again.values())
    # b's next flush, and a's (already applied) text resent with its old number
    store.append_many("w1", {"a": "x", "b": "z"}, {"a": 1, "b": 2})
    assert _texts(store, "a") == ["x"] and _texts(store, "b") == ["y", "z"]
    assert store.append("b", "w1", "z", seq=2) == [ops.ALREADY_APPLIED]  # one number line per attempt


def test_a_new_attempt_starts_a_new_sequence(store: JobStore) -> None:
    """After a requeue the next claim's writer numbers from 1 again and is not skipped."""
    _create(store, "j1")
    assert store.claim("j1", "w1").won
    for seq, text in enumerate(["a", "b", "c"], start=1):
        store.append_many("w1", {"j1": text}, {"j1": seq})
    assert store.release("j1", "w1").action == "requeued"
    assert store.append("j1", "w1", "late", seq=4) == []  # the old attempt is fenced out, as before
    assert store.claim("j1", "w2").won
    assert store.append("j1", "w2", "A", seq=1) not in ([], [ops.ALREADY_APPLIED])
    ack = store.append_many("w2", {"j1": "B"}, {"j1": 2})["j1"]
    assert ack.owned and ack.written
    assert store.append("j1", "w2", "B", seq=2) == [ops.ALREADY_APPLIED]
    tokens = [e.text for e in store.read_stream("j1") if e.type == "token"]
    assert tokens == ["a", "b", "c", "A", "B"]
    # the same worker claiming the job again (a later attempt) starts over too
    assert store.release("j1", "w2").action == "requeued"
    assert store.claim("j1", "w2").won
    assert store.append("j1", "w2", "again", seq=1) not in ([], [ops.ALREADY_APPLIED])


class _ReplyLossProxy(_RedisRelay):
    """A relay that, once ``lose_next_reply()`` was called, lets the next command run on the server
    but drops its reply and closes the connection: what redis-py sees when a connection dies after
    Redis ran a script, so its Retry runs the script a second time."""

    def __init__(self, port: int) -> None:
        self.armed = threading.Event()
        super().__init__(port)

    def lose_next_reply(self) -> None:
        self.armed.set()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._down, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _up(client: socket.socket, upstream: socket.socket) -> None:
        while data := _recv(client):
            try:
                upstream.sendall(data)
            except OSError:
                break

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        while data := _recv(upstream):
            if self.armed.is_set():  # the command ran; its answer never arrives
                self.armed.clear()
                break
            client.sendall(data)
        for sock in (client, upstream):  # shutdown (not only close) wakes the relay's other thread
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_client_retry_after_a_lost_reply_does_not_append_twice(redis_factory, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """The connection dies after Redis ran APPEND / APPEND_MANY: redis-py's Retry runs the script
    again on a fresh connection, with the same flush number, and the text is in the stream once."""
    server = redis_factory()
    proxy = _ReplyLossProxy(server.port)
    store = JobStore.from_settings(settings.model_copy(update={"redis_url": proxy.url}))
    try:
        _create(store, "j1")
        assert store.claim("j1", "w1").won
        assert len(store.append("j1", "w1", "Hel", seq=1)) == 1  # loads the scripts first
        assert store.append_many("w1", {"j1": "lo"}, {"j1": 2})["j1"].written
        proxy.lose_next_reply()
        assert store.append("j1", "w1", ", wor", seq=3) == [ops.ALREADY_APPLIED]  # the retry's answer
        assert not proxy.armed.is_set()  # the reply really was lost (and the call retried)
        proxy.lose_next_reply()
        ack = store.append_many("w1", {"j1": "ld"}, {"j1": 4})["j1"]
        assert ack.owned and ack.written and not proxy.armed.is_set()
        assert _texts(store, "j1") == ["Hel", "lo", ", wor", "ld"]
    finally:
        store.client.close()
        proxy.close()


def test_cancel_recognises_its_own_replay(store: JobStore) -> None:
    """A retry re-sends the very same CANCEL (same ``now``) after its reply was lost: it answers
    "cancelled" again (the caller did cancel the job), while another cancel call finds it terminal."""
    from tnllm.store import CancelKind

    _create(store, "j1")
    call = ops.cancel_call("j1", store.ttl, 1000.5)
    first = ops.parse_cancel(store._run(call))
    replay = ops.parse_cancel(store._run(call))
    assert first.kind is CancelKind.CANCELLED and replay.kind is CancelKind.CANCELLED
    again = store.cancel("j1")
    assert again.kind is CancelKind.TERMINAL and again.status is JobStatus.CANCELLED


def test_a_cancel_whose_reply_timed_out_is_replayed(store: JobStore, settings: Settings) -> None:
    """The clients do not retry timeouts (a write may still run), but CANCEL is safe to replay: the
    store sends it again and answers "cancelled" instead of raising."""
    from tnllm.store import CancelKind

    _create(store, "j1")
    slow = JobStore(redis_client(settings.redis_url or "", socket_timeout=0.4), settings)
    slow.client.script_load(scripts.ALL["cancel"])
    try:
        store.client.execute_command("CLIENT", "PAUSE", 600, "WRITE")  # scripts wait it out
        outcome = slow.cancel("j1")
    finally:
        slow.client.close()
    assert outcome.kind is CancelKind.CANCELLED
    record = store.get("j1")
    assert record is not None and record.status is JobStatus.CANCELLED


@pytest.mark.parametrize("asyncio_client", [False, True])
def test_one_retry_policy_for_both_clients(asyncio_client: bool) -> None:
    """Connection errors are retried on a fresh connection; timeouts never are, sync or asyncio."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from tnllm.store import async_redis_client

    make = async_redis_client if asyncio_client else redis_client
    client = make("redis://127.0.0.1:1/0")
    options = client.connection_pool.connection_kwargs
    assert options["retry"]._supported_errors == (RedisConnectionError,)
    assert options["retry_on_error"] == [RedisConnectionError] and not options.get("retry_on_timeout")
    assert options["decode_responses"] and client.connection_pool.max_connections == 4096


def test_claim_and_finish_statistics_read_nothing_more(store: JobStore) -> None:
    """CLAIM answers created_at and FINISH started_at, so the queue-wait and run-time statistics
    cost no read of the record (only the scripts' own HMGETs run: INFO commandstats)."""
    _create(store, "st")

    def calls() -> dict[str, int]:
        info = store.client.info("commandstats")
        return {k: int(info.get(f"cmdstat_{k}", {}).get("calls", 0)) for k in ("hget", "hmget", "hincrby")}

    before = calls()
    assert store.claim("st", "w").won
    result = JobResult(text="x", finish_reason="length", usage=Usage(prompt_tokens=2, completion_tokens=1))
    assert store.finish("st", "w", JobStatus.SUCCEEDED, result=result)
    after = calls()
    assert after["hget"] - before["hget"] == 0
    assert after["hmget"] - before["hmget"] == 2  # one inside each script
    stats = store.client.hgetall("tnllm:metrics:jobs")
    assert stats["queued:count"] == "1" and stats["duration:count"] == "1"
    assert stats["tokens:prompt"] == "2" and stats["tokens:completion"] == "1"
