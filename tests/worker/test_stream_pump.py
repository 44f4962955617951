"""The worker's stream pump against a real redis-server and a real engine on the tiny demo model.

Most tests drive the engine (``step()``) and the pump (``tick()``) by hand, so every interleaving
they check is deterministic; the last ones run the real threads (engine loop, pump, task threads
through ``run_job``) as a worker process does, without Celery.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from tnllm.config import Settings
from tnllm.engine import Engine, EngineRequest, SamplingParams
from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import TokenEvent
from tnllm.store import GenerationParams, JobStatus, JobStore, keys
from tnllm.store.server import RedisServer
from tnllm.worker.active import ActiveJob
from tnllm.worker.deltas import DeltaWriter
from tnllm.worker.job_runner import build_request, run_job
from tnllm.worker.runtime import WorkerRuntime
from tnllm.worker.stream_pump import StreamPump

WORKER = "pump-test-worker"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tiny model gains nothing from more on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_tokenizer(demo_model_dir: Path) -> tuple[Any, Any]:
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import load_tokenizer

    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32).eval()
    return model, load_tokenizer(demo_model_dir)


@pytest.fixture
def engine(model_and_tokenizer: tuple[Any, Any]) -> Iterator[Engine]:
    model, tokenizer = model_and_tokenizer
    eng = Engine(model, tokenizer, slots=8, prefill_token_budget=64)
    yield eng
    eng.stop(timeout=5)


def _store(url: str) -> JobStore:
    return JobStore.from_settings(Settings(redis_url=url, lease_ttl=30.0, lease_renew_interval=5.0))


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    s = _store(redis_url)
    yield s
    s.client.close()


class Run:
    """Jobs claimed by WORKER, each with a real engine request, a writer and its ActiveJob."""

    def __init__(self, store: JobStore, engine: Engine, pump: StreamPump) -> None:
        self.store, self.engine, self.pump = store, engine, pump
        self.jobs: dict[str, ActiveJob] = {}
        self.handles: dict[str, RequestHandle] = {}

    def start(self, job_id: str, new_tokens: int, prompt: int = 3) -> ActiveJob:
        out = self.store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="hi"))
        assert out.kind == "created"
        assert self.store.claim(job_id, WORKER).won
        job = ActiveJob(job_id)
        writer = DeltaWriter(self.store, job_id, WORKER)
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        request = EngineRequest(f"{job_id}:1", [prompt, 5, 7, 11], params)
        handle = self.engine.submit(request, on_token=writer.on_token)
        job.attach(self.engine, request.request_id, writer)
        self.pump.add(job)
        self.jobs[job_id], self.handles[job_id] = job, handle
        return job

    def streamed(self, job_id: str) -> list[str]:
        """The texts of the job's stream entries, in order."""
        return [f["text"] for _, f in self.store.client.xrange(keys.stream(job_id)) if f.get("t") == "token"]

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.engine.step()


@pytest.fixture
def make_run(engine: Engine) -> Callable[[JobStore], Run]:
    def make(store: JobStore) -> Run:
        return Run(store, engine, StreamPump(store, WORKER, interval=0.05))

    return make


def test_pump_streams_every_job_in_order_while_it_runs(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    run = make_run(store)
    for i in range(6):
        run.start(f"job{i}", new_tokens=12 + 3 * i, prompt=3 + i)
    mid: dict[str, str] = {}
    rounds = 0
    while not all(h.done() for h in run.handles.values()):
        run.steps(2)
        run.pump.tick()
        rounds += 1
        if rounds == 4:
            mid = {job_id: "".join(run.streamed(job_id)) for job_id in run.jobs}
    run.pump.tick()
    for job_id, handle in run.handles.items():
        text = handle.result().text
        assert text, "the demo tokenizer decodes the random model's tokens to text"
        # tokens were in the stream while the job ran, and the stream holds the text exactly once
        assert mid[job_id] and text.startswith(mid[job_id]) and mid[job_id] != text
        entries = run.streamed(job_id)
        assert len(entries) >= 4
        assert "".join(entries) == text
        assert not run.jobs[job_id].lost.is_set() and not run.jobs[job_id].cancel.is_set()


def test_lost_lease_stops_writes_and_cancels_the_engine_request(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    run = make_run(store)
    keep, lose = run.start("keep", new_tokens=40), run.start("lose", new_tokens=40)
    run.steps(4)
    run.pump.tick()
    written = run.streamed("lose")
    assert written
    store.client.hset(keys.job("lose"), "lease_owner", "another-worker")  # taken over elsewhere
    run.steps(2)
    run.pump.tick()
    assert lose.lost.is_set() and not keep.lost.is_set()
    run.steps(1)  # the engine retires the cancelled request at the start of its next step
    result = run.handles["lose"].result(timeout=0)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 40
    # the other worker writes the stream now: nothing more from this one
    store.client.hset(keys.job("lose"), "lease_owner", WORKER)
    run.steps(3)
    for _ in range(3):
        run.pump.tick()
    assert run.streamed("lose") == written
    assert len(run.streamed("keep")) > len(written)


def test_cancel_request_stops_generation_within_a_round(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    run = make_run(store)
    job = run.start("c1", new_tokens=200)
    other = run.start("c2", new_tokens=200)
    run.steps(3)
    assert store.cancel("c1").kind == "requested"
    run.pump.tick()
    assert job.cancel.is_set() and not other.cancel.is_set()
    run.steps(1)
    result = run.handles["c1"].result(timeout=0)
    assert result.finish_reason == "cancelled"
    assert 0 < result.completion_tokens < 10
    assert not run.handles["c2"].done()
    run.pump.tick()
    assert "".join(run.streamed("c1")) == result.text  # the partial text is kept


def test_redis_restart_mid_stream_retries_the_pending_text(
    redis_factory: Callable[..., RedisServer], make_run: Callable[[JobStore], Run]
) -> None:
    server = redis_factory()
    store = _store(server.url)
    try:
        run = make_run(store)
        job = run.start("r1", new_tokens=30)
        run.steps(4)
        run.pump.tick()
        before = "".join(run.streamed("r1"))
        assert before
        server.stop()  # clean shutdown: the AOF keeps everything written so far
        run.steps(6)
        run.pump.tick()  # Redis is down: must not raise, the text stays pending
        run.pump.tick()
        assert job.writer is not None and job.writer.take()  # still there, unwritten
        server.start()
        run.pump.tick()
        run.steps(40)
        run.pump.tick()
        text = run.handles["r1"].result(timeout=0).text
        entries = run.streamed("r1")
        assert "".join(entries) == text  # nothing lost, nothing twice
        assert not job.lost.is_set()
    finally:
        store.client.close()


def test_a_refused_write_keeps_the_text_for_the_next_round(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    """Redis refusing writes (out of memory) is no outage: the text stays pending and goes out later."""
    run = make_run(store)
    job = run.start("oom", new_tokens=20)
    run.steps(3)
    run.pump.tick()
    before = run.streamed("oom")
    assert before
    run.steps(3)
    store.client.config_set("maxmemory-policy", "noeviction")
    store.client.config_set("maxmemory", "1")
    try:
        with contextlib.suppress(redis.ResponseError):  # the whole call refused, or each XADD
            run.pump.tick()
        assert run.streamed("oom") == before
    finally:
        store.client.config_set("maxmemory", "0")
    assert not job.lost.is_set()
    run.steps(30)
    run.pump.tick()
    assert "".join(run.streamed("oom")) == run.handles["oom"].result(timeout=0).text


class _ReplyLost:
    """The real store, except that an armed ``append`` / ``append_many`` runs on Redis and then
    raises ConnectionError, as when the connection dies before the reply arrives."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.armed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _maybe_drop(self, answer: Any) -> Any:
        if self.armed:
            self.armed -= 1
            raise redis.ConnectionError("connection lost after the script ran")
        return answer

    def append(self, *args: Any, **kwargs: Any) -> list[str]:
        return self._maybe_drop(self.store.append(*args, **kwargs))  # type: ignore[no-any-return]

    def append_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._maybe_drop(self.store.append_many(*args, **kwargs))


def test_a_round_applied_but_unanswered_is_not_written_again(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    """The pump's write reached Redis but its answer did not: the text stays pending with its
    number, and the next round's resend is recognised instead of appended a second time."""
    lossy = _ReplyLost(store)
    run = make_run(lossy)  # type: ignore[arg-type]
    job = run.start("lossy", new_tokens=30)
    run.steps(4)
    run.pump.tick()
    before = run.streamed("lossy")
    assert before
    run.steps(3)
    lossy.armed = 2  # two rounds in a row: applied, then the resend's answer lost too
    run.pump.tick()
    run.steps(2)  # more text arrives while the first is unconfirmed
    run.pump.tick()
    after = run.streamed("lossy")
    assert len(after) == len(before) + 1  # the first lost round's text, once
    run.pump.tick()  # answered now: the resend is "applied already", then the rest goes out
    run.pump.tick()
    run.steps(40)
    run.pump.tick()
    assert not job.lost.is_set()
    assert "".join(run.streamed("lossy")) == run.handles["lossy"].result(timeout=0).text


def test_a_final_flush_applied_but_unanswered_is_not_written_again(store: JobStore) -> None:
    """The task thread's final flush: same story through ``append`` (the APPEND script)."""
    assert store.create(job_id="final", owner="o", params=GenerationParams(prompt="hi")).kind == "created"
    assert store.claim("final", WORKER).won
    lossy = _ReplyLost(store)
    writer = DeltaWriter(lossy, "final", WORKER)
    for text in ("Hel", "lo"):
        writer.on_token(TokenEvent("final:1", text, [1]))
    lossy.armed = 1
    assert not writer.flush()  # applied, but the answer was lost: pending

    def streamed() -> list[str]:
        return [f["text"] for _, f in store.client.xrange(keys.stream("final"))]

    assert streamed() == ["Hello"]
    writer.on_token(TokenEvent("final:1", " world", [2]))
    assert writer.flush()  # "Hello" recognised as written, then " world"
    assert streamed() == ["Hello", " world"]


def test_final_flush_and_pump_never_write_the_same_text_twice(
    store: JobStore, make_run: Callable[[JobStore], Run]
) -> None:
    """The task thread's flush and the pump's round race on one writer; the lock keeps them apart.

    Each round the engine makes a delta, then both writers are let go at the same instant.
    """
    run = make_run(store)
    job = run.start("race", new_tokens=40)
    writer = job.writer
    assert writer is not None
    go = threading.Barrier(3, timeout=30)
    stop = threading.Event()
    errors: list[BaseException] = []

    def racer(fn: Callable[[], Any]) -> None:
        try:
            while True:
                go.wait()  # start together
                if stop.is_set():
                    return
                fn()
                go.wait()  # done together
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=racer, args=(writer.flush,)),
        threading.Thread(target=racer, args=(run.pump.tick,)),
    ]
    for t in threads:
        t.start()
    while not run.handles["race"].done():
        run.steps(1)
        go.wait()
        go.wait()
    stop.set()
    go.wait()
    for t in threads:
        t.join(10)
    assert not errors
    text = run.handles["race"].result(timeout=0).text
    entries = run.streamed("race")
    assert len(entries) > 5
    assert "".join(entries) == text


def test_store_batches_answer_per_job(store: JobStore) -> None:
    for job_id in ("a", "b", "c", "d"):
        assert store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="x")).kind == "created"
    for job_id in ("a", "b", "d"):
        assert store.claim(job_id, WORKER).won
    assert store.claim("c", "other").won
    assert store.cancel("b").kind == "requested"
    store.client.set(keys.stream("d"), "not a stream")  # this job's XADD fails; the others' do not
    acks = store.append_many(WORKER, {"a": "xy", "b": "", "c": "nope", "d": "z", "gone": "q"})
    assert [(k, a.owned, a.written, a.cancel_requested) for k, a in acks.items()] == [
        ("a", True, True, False),
        ("b", True, True, True),
        ("c", False, False, False),
        ("d", True, False, False),
        ("gone", False, False, False),
    ]
    texts = {j: [f["text"] for _, f in store.client.xrange(keys.stream(j))] for j in ("a", "b", "c")}
    assert texts == {"a": ["xy"], "b": [], "c": []}
    assert store.client.ttl(keys.stream("a")) > 0
    store.client.delete(keys.lease("a"))
    leases = store.renew_leases(["a", "b", "c"], WORKER)
    statuses = [(s.owned, s.cancel_requested) for s in leases.values() if not isinstance(s, Exception)]
    assert statuses == [(True, False), (True, True), (False, False)]
    assert store.lease_alive("a")
    assert store.append_many(WORKER, {}) == {} and store.renew_leases([], WORKER) == {}


# --- the real threads: engine loop, pump thread, task threads (run_job), no Celery -----------------


@pytest.fixture
def runtime(redis_url: str, engine: Engine) -> Iterator[WorkerRuntime]:
    settings = Settings(
        redis_url=redis_url,
        # the heartbeat (which also notices cancels) stays out of the way: only the pump can stop the
        # cancelled job within the time the test allows
        lease_ttl=60.0,
        lease_renew_interval=20.0,
        reaper_interval=60.0,
        stream_flush_interval=0.02,
    )
    rt = WorkerRuntime(settings, hostname="pump@test")
    rt.engine = engine
    engine.start()
    rt.start_background()
    yield rt
    rt.close()


def _submit(store: JobStore, job_id: str, new_tokens: int) -> None:
    params = GenerationParams(prompt=f"tell me a story {job_id}", max_new_tokens=new_tokens)
    assert store.create(job_id=job_id, owner="o", params=params).kind == "created"


def test_run_job_streams_through_the_pump_and_cancels_quickly(
    runtime: WorkerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = runtime.store
    for i in range(6):
        _submit(store, f"t{i}", 48)
    _submit(store, "long", 4000)
    outcomes: dict[str, str] = {}

    def task(job_id: str) -> None:
        outcomes[job_id] = run_job(runtime, job_id)

    threads = [threading.Thread(target=task, args=(j,)) for j in [*(f"t{i}" for i in range(6)), "long"]]
    for t in threads:
        t.start()
    # the long job streams while it runs, then a cancel stops it within a round or two
    deadline = time.monotonic() + 60
    while len(store.client.xrange(keys.stream("long"))) < 3:
        assert time.monotonic() < deadline, "no deltas streamed while the job ran"
        time.sleep(0.01)
    assert store.get("long").status is JobStatus.RUNNING  # type: ignore[union-attr]
    asked = time.time()
    assert store.cancel("long").kind == "requested"
    for t in threads:
        t.join(120)
    stopped = store.get("long")
    assert stopped is not None and stopped.status is JobStatus.CANCELLED
    assert stopped.finished_at is not None
    assert stopped.finished_at.timestamp() - asked < 2.0  # the heartbeat would take up to 20 s
    assert stopped.result is not None and 0 < stopped.result.usage.completion_tokens < 4000
    assert outcomes == {**{f"t{i}": "succeeded" for i in range(6)}, "long": "cancelled"}
    for job_id in [*(f"t{i}" for i in range(6)), "long"]:
        record = store.get(job_id)
        assert record is not None and record.result is not None
        entries = store.client.xrange(keys.stream(job_id))
        tokens = [f["text"] for _, f in entries if f.get("t") == "token"]
        assert "".join(tokens) == record.result.text
        assert entries[-1][1]["t"] == "done"
    assert runtime.pump.jobs() == [] and runtime.active.snapshot() == []
    # a job that its own task finished is no lost lease (the pump lets go of it before the finish)
    assert not [r for r in caplog.records if "lease lost" in r.getMessage()]


def test_a_job_claimed_again_by_the_same_process_abandons_its_earlier_attempt(
    runtime: WorkerRuntime,
) -> None:
    """This process stalled past its lease, the job went back to the queue and came back here: the
    owner fence (per process) cannot tell the two attempts apart, so the process itself must drop the
    earlier one, keep serving the new one (lease, stream); the new one resumes from what the earlier
    one streamed, so the whole stream is the result's text (no reset, no repeat)."""
    store = runtime.store
    _submit(store, "again", 600)
    outcomes: dict[str, str] = {}

    def task(name: str) -> None:
        outcomes[name] = run_job(runtime, "again")

    first = threading.Thread(target=task, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    while len(store.client.xrange(keys.stream("again"))) < 3:
        assert time.monotonic() < deadline, "the first attempt never streamed"
        time.sleep(0.01)
    # the stall: nothing of this process looks at Redis while the lease runs out and the job is reaped
    runtime.pump.stop()
    store.client.delete(keys.lease("again"))
    assert store.reap("again").action == "requeued"
    second = threading.Thread(target=task, args=("second",))
    second.start()
    while (record := store.get("again")) is None or record.attempt < 2:
        assert time.monotonic() < deadline, "the second delivery never claimed the job"
        time.sleep(0.01)
    runtime.pump.start()
    first.join(30)
    assert outcomes.get("first") == "lease_lost"
    running = store.get("again")
    assert running is not None
    if running.status is JobStatus.RUNNING:  # the new attempt is still served: heartbeat and pump
        served = runtime.active.snapshot()
        assert len(served) == 1 and not served[0].lost.is_set()
        assert runtime.pump.jobs() == served
        assert store.cancel("again").kind == "requested"
    second.join(60)
    assert outcomes.get("second") in ("succeeded", "cancelled")
    done = store.get("again")
    assert done is not None and done.result is not None and done.attempt == 2
    entries = store.client.xrange(keys.stream("again"))
    assert "reset" not in [f.get("t") for _, f in entries]
    assert "".join(f["text"] for _, f in entries if f.get("t") == "token") == done.result.text
    assert runtime.active.snapshot() == [] and runtime.pump.jobs() == []


@pytest.mark.parametrize("n", [1, 2])
def test_an_unseeded_sampled_job_resumes_exactly_and_n_choices_start_over(
    runtime: WorkerRuntime, engine: Engine, n: int
) -> None:
    """Attempt 1 streamed 5 tokens and died. An unseeded n = 1 job goes on from them with the seed
    derived from its id (the text equals one uninterrupted run); n = 2 gets a reset and starts over."""
    store = runtime.store
    job_id = f"hot{n}"
    params = GenerationParams(
        prompt=f"a story {job_id}", max_new_tokens=20, temperature=1.0, n=n, ignore_eos=True
    )
    assert store.create(job_id=job_id, owner="o", params=params).kind == "created"
    record = store.get(job_id)
    assert record is not None and record.params.seed is None
    ref_req = build_request(runtime, record)
    ref = engine.generate([EngineRequest("ref", ref_req.prompt_ids, ref_req.params)])[0]
    assert store.claim(job_id, "dead-worker").won
    store.append(job_id, "dead-worker", "earlier", seq=1, ids=ref.token_ids[:5])
    store.client.delete(keys.lease(job_id))
    assert store.reap(job_id).action == "requeued"
    assert run_job(runtime, job_id) == "succeeded"
    done = store.get(job_id)
    assert done is not None and done.result is not None and done.attempt == 2
    assert [c.text for c in done.result.choices] == [c.text for c in ref.choices]
    kinds = [e.type for e in store.streamed(job_id)]
    assert ("reset" in kinds) == (n == 2)
