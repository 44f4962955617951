"""Issue 15's parameters on the native job API: n, penalties, logit_bias, logprobs, response_format
are accepted and stored as given, refused with a 422 naming the problem (a schema that cannot be
compiled, n over TNLLM_MAX_N), and the job stream carries each choice's deltas and logprobs."""

from __future__ import annotations

import json

import httpx

from tests.api.conftest import FakeWorkerRun
from tests.api.test_stream import sse_events
from tnllm.engine.types import TokenEvent
from tnllm.protocol.jobs import JobResult, Usage
from tnllm.protocol.outputs import TokenLogprob
from tnllm.store import JobStatus, JobStore
from tnllm.worker.deltas import DeltaWriter

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


async def test_the_parameters_are_stored_as_given(client: httpx.AsyncClient) -> None:
    body = {
        "prompt": "Hi",
        "n": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -1.0,
        "logit_bias": {"17": 100, "5": -2.5},
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
    }
    r = await client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert {k: job[k] for k in body if k != "prompt"} == {
        **{k: v for k, v in body.items() if k != "prompt"},
        "logit_bias": {"17": 100.0, "5": -2.5},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": SCHEMA, "strict": None, "description": None},
        },
    }


async def test_bad_values_are_422s_naming_the_field(client: httpx.AsyncClient) -> None:
    cases = [
        ({"n": 17}, "n", "n: at most 16 (got 17)"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs: needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"presence_penalty": 2.5}, "presence_penalty", "less than or equal to 2"),
        ({"logit_bias": {"3": 101}}, "logit_bias", "within -100..100"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "valid integer"),
        ({"response_format": {"type": "xml"}}, "response_format", "xml"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "foo"}},
                }
            },
            "response_format",
            "response_format: the JSON schema cannot be compiled: Invalid type: foo",
        ),
    ]
    for extra, field, words in cases:
        r = await client.post("/v1/jobs", json={"prompt": "Hi", **extra})
        assert r.status_code == 422, (extra, r.text)
        error = r.json()["error"]
        assert error["field"].startswith(field) and words in error["message"], (extra, error)


def _entry(text: str, token_id: int) -> TokenLogprob:
    return TokenLogprob(token=text, token_id=token_id, logprob=-0.5, bytes=list(text.encode()))


async def test_the_stream_carries_each_choice_and_its_logprobs(
    client: httpx.AsyncClient, worker_store: JobStore
) -> None:
    job_id = (await client.post("/v1/jobs", json={"prompt": "Hi", "n": 2, "logprobs": True})).json()["id"]
    FakeWorkerRun(worker_store, job_id).claim()
    writer = DeltaWriter(worker_store, job_id, "test-worker")
    for index, text, tok in [(0, "He", 7), (1, "Yo", 8), (0, "y", 9)]:
        writer.on_token(TokenEvent(f"{job_id}:1", text, [tok], index, [_entry(text, tok)]))
    assert writer.flush()  # one entry: both choices, merged per choice
    writer.on_token(TokenEvent(f"{job_id}:1", "!", [3], 1, [_entry("!", 3)]))
    assert writer.flush()
    result = JobResult(text="Hey", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=4))
    assert worker_store.finish(job_id, "test-worker", JobStatus.SUCCEEDED, result=result)
    async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        events = [e async for e in sse_events(response)]
    tokens = [(json.loads(e.data), e.id) for e in events if e.event == "token"]
    assert [(d["index"], d["text"], [lp["token_id"] for lp in d["logprobs"]]) for d, _ in tokens] == [
        (0, "Hey", [7, 9]),
        (1, "Yo", [8]),
        (1, "!", [3]),
    ]
    ids = [i for _, i in tokens]
    assert ids[0] is None and ids[1] and ids[2] and ids[1] != ids[2]  # only an entry's last event has its id
    assert events[-1].event == "done"
