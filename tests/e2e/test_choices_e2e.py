"""Issue 15's engine features end to end through /v1/jobs (redis-server, a Celery worker whose engine
runs in its child process on the demo model, uvicorn): n choices with logprobs streamed per choice
over SSE, one prefill for them, a json_schema answer that validates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.e2e.client import Jobs
from tests.fixtures.services import Stack
from tnllm.store.server import RedisServer

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["name", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s = Stack(
        module_redis.url, demo_model_dir, tmp_path_factory.mktemp("e2e-choices"), TNLLM_ENGINE_SLOTS="4"
    )
    s.start_worker("w1")
    s.start_api()
    yield s
    s.close()


def _stream(base_url: str, job_id: str) -> list[tuple[str, dict]]:
    events, fields = [], {}
    with httpx.stream("GET", f"{base_url}/v1/jobs/{job_id}/stream", timeout=60) as response:
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    events.append((fields.get("event", "message"), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


def _prefills(stack: Stack) -> float:
    """The worker's tnllm_engine_prefills_total, from its Prometheus endpoint (its heartbeat port)."""
    store = stack.store()
    try:
        (info,) = store.workers()
    finally:
        store.client.close()
    text = httpx.get(f"http://127.0.0.1:{info.metrics_port}/metrics", timeout=10).text
    return next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("tnllm_engine_prefills_total")
    )


def test_n_choices_with_logprobs_over_the_job_api(stack: Stack) -> None:
    jobs = Jobs(stack.api_url)
    try:
        before = _prefills(stack)
        body = dict(
            max_new_tokens=10, temperature=1.0, seed=11, n=3, logprobs=True, top_logprobs=2, ignore_eos=True
        )
        job = jobs.submit("Once upon a time", **body)
        events = _stream(stack.api_url, job["id"])
        final = jobs.wait(job["id"])
        assert final["status"] == "succeeded", final
        result = final["result"]
        assert len(result["choices"]) == 3 and result["usage"]["completion_tokens"] == 30
        assert events[-1][0] == "done" and events[-1][1]["result"] == result
        for choice in result["choices"]:
            mine = [d for kind, d in events if kind == "token" and d["index"] == choice["index"]]
            assert "".join(d["text"] for d in mine) == choice["text"]
            assert [lp for d in mine for lp in d.get("logprobs", [])] == choice["logprobs"]
            assert len(choice["logprobs"]) == 10 and all(e["logprob"] <= 0 for e in choice["logprobs"])
        greedy = jobs.submit("Once upon a time", max_new_tokens=6, n=3, ignore_eos=True)
        texts = {c["text"] for c in jobs.wait(greedy["id"])["result"]["choices"]}
        assert len(texts) == 1  # greedy: three equal choices ...
        # ... and each request prefilled its prompt once (the engine reports its stats every 0.25 s)
        deadline = time.monotonic() + 10
        while _prefills(stack) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _prefills(stack) == before + 2
    finally:
        jobs.close()


def test_json_schema_answer_validates_and_a_bad_schema_is_a_422(stack: Stack) -> None:
    jobs = Jobs(stack.api_url)
    try:
        fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
        job = jobs.submit("Give me JSON", max_new_tokens=60, response_format=fmt)
        final = jobs.wait(job["id"])
        assert final["status"] == "succeeded" and final["result"]["finish_reason"] == "stop", final
        jsonschema.validate(json.loads(final["result"]["text"]), SCHEMA)
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
        r = jobs.http.post("/v1/jobs", json={"prompt": "x", "response_format": bad})
        assert r.status_code == 422 and "/nowhere" in r.json()["error"]["message"], r.text
    finally:
        jobs.close()
