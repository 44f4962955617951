"""State reuse end to end (real redis-server, `tnllm worker` on the demo model, `tnllm api`):
conversation turns through ``continue_from``, a shared 1,000-token prefix, pinned prefixes under
LRU pressure. Every reuse is compared token for token with the same jobs run with
``"state_cache": false`` (a full recompute)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import Jobs
from tests.fixtures.services import Stack
from tnllm.protocol.celery import broker_lists
from tnllm.protocol.tasks import worker_queue
from tnllm.store.server import RedisServer
from tnllm.store.states import load_conversation

pytestmark = pytest.mark.slow

#: states the device tier holds (tiny demo model): small, so a handful of jobs evicts everything
BUDGET_STATES = 12
SAMPLED = {"temperature": 0.8, "top_k": 40, "seed": 7, "max_new_tokens": 10}


def _state_bytes(model_dir: Path) -> int:
    from tnllm.model import load_pretrained

    return int(load_pretrained(model_dir).state_bytes_per_sequence())


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    budget = BUDGET_STATES * _state_bytes(demo_model_dir)
    s = Stack(
        module_redis.url,
        demo_model_dir,
        tmp_path_factory.mktemp("state-e2e"),
        TNLLM_ENGINE_SLOTS="4",
        TNLLM_STATE_CACHE_DEVICE_BYTES=str(budget),
        TNLLM_STATE_CACHE_HOST_BYTES="0",
        TNLLM_STATE_CACHE_DISK_BYTES="0",
    )
    s.start_worker("w1")
    s.start_api()
    yield s
    s.close()


@pytest.fixture
def jobs(stack: Stack) -> Iterator[Jobs]:
    client = Jobs(stack.api_url)
    yield client
    client.close()


class Engine:
    """The worker's engine counters, read from its Prometheus endpoint."""

    def __init__(self, stack: Stack) -> None:
        store = stack.store()
        try:
            [worker] = store.workers()
        finally:
            store.client.close()
        self.url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

    def read(self) -> dict[str, float]:
        text = httpx.get(self.url, timeout=10).text
        return {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.labels
        }

    def after(self, finished: float, timeout: float = 30.0) -> dict[str, float]:
        """The counters once the engine has finished ``finished`` requests (its stats come in every
        0.25 s)."""
        deadline = time.monotonic() + timeout
        while True:
            numbers = self.read()
            if numbers["tnllm_engine_finished_requests_total"] >= finished:
                return numbers
            assert time.monotonic() < deadline, f"engine stuck at {numbers}"
            time.sleep(0.1)


def run(jobs: Jobs, **body: Any) -> dict[str, Any]:
    r = jobs.http.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    final = jobs.wait(r.json()["id"])
    assert final["status"] == "succeeded", final
    return final


def conv_ids(stack: Stack, job_id: str) -> list[int]:
    store = stack.store()
    try:
        conv = load_conversation(store.client, job_id)
    finally:
        store.client.close()
    assert conv is not None
    return conv.ids


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["state", "linear", "attention", "token", "decay", "prefix", "model", "cache", "slot", "turn"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(100)) for _ in range(n))


TURNS = ["Tell me about linear attention.", "And what does the decay do?", "Thanks; now summarise it."]


def conversation(jobs: Jobs, state_cache: bool) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    for text in TURNS:
        extra = {"continue_from": done[-1]["id"]} if done else {}
        body = {"messages": [{"role": "user", "content": text}], "state_cache": state_cache, **SAMPLED}
        done.append(run(jobs, **body, **extra))
    return done


def test_three_turns_through_continue_from_equal_their_recompute(stack: Stack, jobs: Jobs) -> None:
    engine = Engine(stack)
    before = engine.after(0)
    cached: list[dict[str, Any]] = []
    for text in TURNS:
        extra = {"continue_from": cached[-1]["id"]} if cached else {}
        body = {"messages": [{"role": "user", "content": text}], **SAMPLED, **extra}
        cached.append(run(jobs, **body))
        after = engine.after(before["tnllm_engine_finished_requests_total"] + 1)
        usage = cached[-1]["result"]["usage"]
        moved = after["tnllm_engine_prefill_tokens_total"] - before["tnllm_engine_prefill_tokens_total"]
        assert moved == usage["prompt_tokens"] - usage["cached_tokens"], "only the new tokens are prefilled"
        if len(cached) > 1:
            earlier = cached[-2]["result"]["usage"]
            assert usage["cached_tokens"] >= earlier["prompt_tokens"] + earlier["completion_tokens"] - 1
        before = after
    plain = conversation(jobs, state_cache=False)
    for a, b in zip(cached, plain, strict=True):
        assert a["result"]["text"] == b["result"]["text"]
        assert conv_ids(stack, a["id"]) == conv_ids(stack, b["id"])
        assert b["result"]["usage"]["cached_tokens"] == 0
    assert cached[-1]["continue_from"] == cached[-2]["id"]


def test_a_shared_1000_token_prefix_is_prefilled_once(stack: Stack, jobs: Jobs) -> None:
    doc = {"role": "user", "content": "Read this: " + words(220, seed=1)}
    ask = [{"role": "user", "content": q} for q in ("What is first?", "Which word repeats most?")]
    first = run(jobs, messages=[doc, ask[0]], **SAMPLED)
    second = run(jobs, messages=[doc, ask[1]], **SAMPLED)
    plain = run(jobs, messages=[doc, ask[1]], state_cache=False, **SAMPLED)
    usage = second["result"]["usage"]
    assert usage["prompt_tokens"] - first["result"]["usage"]["prompt_tokens"] < 20, (
        "only the question differs"
    )
    assert (
        usage["cached_tokens"] >= 1000 and usage["prompt_tokens"] - usage["cached_tokens"] < 80
    )  # the question turn
    assert second["result"]["text"] == plain["result"]["text"]
    assert conv_ids(stack, second["id"]) == conv_ids(stack, plain["id"])


def test_a_pinned_prefix_survives_lru_pressure(stack: Stack, jobs: Jobs) -> None:
    engine = Engine(stack)
    doc = {"role": "user", "content": "Manual: " + words(60, seed=2)}
    done = engine.read()["tnllm_engine_finished_requests_total"]
    r = jobs.http.post("/v1/prefixes", json={"messages": [doc]})
    assert r.status_code == 201, r.text
    prefix = r.json()
    assert prefix["object"] == "prefix" and prefix["tokens"] > 100
    engine.after(done + 1)  # the worker's pin request ran at its heartbeat
    for i in range(BUDGET_STATES):  # each job saves 3+ states: far over the budget
        run(jobs, prompt=words(8, seed=100 + i), max_new_tokens=2)
    question = [doc, {"role": "user", "content": "Summarise the manual."}]
    hit = run(jobs, messages=question, **SAMPLED)
    assert hit["result"]["usage"]["cached_tokens"] >= prefix["tokens"]
    assert (
        hit["result"]["text"] == run(jobs, messages=question, state_cache=False, **SAMPLED)["result"]["text"]
    )
    assert jobs.http.get(f"/v1/prefixes/{prefix['id']}").json()["tokens"] == prefix["tokens"]
    assert jobs.http.delete(f"/v1/prefixes/{prefix['id']}").status_code == 200
    assert jobs.http.get(f"/v1/prefixes/{prefix['id']}").status_code == 404
    time.sleep(1.5)  # a few heartbeats: the worker unpins it
    for i in range(BUDGET_STATES):
        run(jobs, prompt=words(8, seed=200 + i), max_new_tokens=2)
    again = run(jobs, messages=question, **SAMPLED)
    assert again["result"]["usage"]["cached_tokens"] < prefix["tokens"], "unpinned: evicted like any state"


def test_continue_from_refuses_what_it_cannot_continue(stack: Stack, jobs: Jobs) -> None:
    r = jobs.http.post("/v1/jobs", json={"prompt": "hi", "continue_from": "nope"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "continue_from"
    long = jobs.submit("Write a long story", max_new_tokens=400, ignore_eos=True)
    r = jobs.http.post("/v1/jobs", json={"prompt": "more", "continue_from": long["id"]})
    assert r.status_code == 409 and r.json()["error"]["type"] == "not_continuable", r.text
    jobs.http.post(f"/v1/jobs/{long['id']}/cancel")
    raw = run(
        jobs, prompt=" and then", continue_from=run(jobs, prompt="Once upon a time", max_new_tokens=4)["id"]
    )
    r = jobs.http.post(
        "/v1/jobs", json={"messages": [{"role": "user", "content": "x"}], "continue_from": raw["id"]}
    )
    assert r.status_code == 422 and "raw text" in r.json()["error"]["message"]
    r = jobs.http.post("/v1/prefixes", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert r.status_code == 422


def test_a_continuation_whose_worker_died_is_recomputed_on_another(stack: Stack, jobs: Jobs) -> None:
    """Runs last in this module: it kills the module's worker."""
    first = run(jobs, messages=[{"role": "user", "content": "Hello there"}], **SAMPLED)
    store = stack.store()
    try:
        [w1] = [w for w in store.workers() if w.hostname == "w1@test"]
        stack.start_worker("w2")
        stack.children[0].signal(signal.SIGKILL)
        stack.children[0].wait(20)
        body = {"messages": [{"role": "user", "content": "Go on"}], "continue_from": first["id"], **SAMPLED}
        second = run(jobs, **body)  # sent to w1's queue (its heartbeat still looked live), then resent
        leftover = [
            m for name in broker_lists(worker_queue(w1.id)).values() for m in store.client.lrange(name, 0, -1)
        ]
        assert len(leftover) == 1, "the API routed it to the dead worker's own queue"
        plain = run(jobs, **{**body, "state_cache": False})
    finally:
        store.client.close()
    assert second["result"]["text"] == plain["result"]["text"]
    assert conv_ids(stack, second["id"]) == conv_ids(stack, plain["id"])
    assert second["result"]["usage"]["cached_tokens"] < first["result"]["usage"]["prompt_tokens"]
