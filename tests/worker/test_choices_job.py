"""A job with n choices and logprobs through the real worker path (engine thread, DeltaWriter, stream
pump, Redis): the stream's per-choice deltas add up to the result's choices, logprobs included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from tnllm.config import Settings
from tnllm.engine import Engine
from tnllm.protocol.jobs import GenerationParams, JobErrorType, JobStatus
from tnllm.store import keys
from tnllm.store.entries import parse_entry
from tnllm.worker.job_runner import JobOutcome, run_job
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Iterator[Engine]:
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import load_tokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32).eval()
    eng = Engine(model, load_tokenizer(demo_model_dir), slots=4, prefill_token_budget=64)
    eng.start()
    yield eng
    eng.stop(timeout=5)
    torch.set_num_threads(before)


@pytest.fixture
def runtime(redis_url: str, engine: Engine) -> Iterator[WorkerRuntime]:
    settings = Settings(redis_url=redis_url, lease_ttl=30.0, stream_flush_interval=0.01)
    rt = WorkerRuntime(settings, hostname="choices@test")
    rt.engine = engine
    rt.pump.start()
    yield rt
    rt.engine = None
    rt.close()


def _run(rt: WorkerRuntime, job_id: str, **params: Any) -> Any:
    created = rt.store.create(job_id=job_id, owner="o", params=GenerationParams(prompt="hi", **params))
    assert created.kind == "created"
    outcome = run_job(rt, job_id)
    record = rt.store.get(job_id)
    assert record is not None
    return outcome, record


def test_n_choices_with_logprobs_stream_and_finish_per_choice(runtime: WorkerRuntime) -> None:
    params = dict(
        max_new_tokens=12, temperature=1.0, seed=7, n=3, logprobs=True, top_logprobs=2, ignore_eos=True
    )
    outcome, record = _run(runtime, "n3", **params)
    assert outcome is JobOutcome.SUCCEEDED and record.status is JobStatus.SUCCEEDED
    result = record.result
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert (result.text, result.finish_reason) == (result.choices[0].text, result.choices[0].finish_reason)
    assert result.usage.completion_tokens == 36 and result.usage.prompt_tokens > 0
    entries = [parse_entry(i, f) for i, f in runtime.store.client.xrange(keys.stream("n3"))]
    deltas = [d for e in entries if e.type == "token" for d in e.deltas]
    for c in result.choices:
        mine = [d for d in deltas if d.index == c.index]
        assert "".join(d.text for d in mine) == c.text
        streamed = [lp for d in mine for lp in d.logprobs or []]
        assert c.logprobs is not None and len(c.logprobs) == 12 and streamed == c.logprobs
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in c.logprobs)
    assert "".join(e.text for e in entries if e.type == "token") == result.text  # text: choice 0's


def test_json_schema_job_and_an_out_of_vocab_bias(runtime: WorkerRuntime, engine: Engine) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    outcome, record = _run(runtime, "js", max_new_tokens=64, response_format=fmt)
    assert outcome is JobOutcome.SUCCEEDED and record.result.finish_reason == "stop"
    jsonschema.validate(json.loads(record.result.text), schema)
    outcome, record = _run(runtime, "bias", max_new_tokens=4, logit_bias={engine.vocab_size: 1.0})
    assert outcome is JobOutcome.FAILED and record.error.type == JobErrorType.INVALID_REQUEST
    assert f"logit_bias: token id {engine.vocab_size} is outside the vocabulary" in record.error.message
