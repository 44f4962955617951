"""How one delivery of a job ends (``JobOutcome``) and the error type it writes (``JobErrorType``):
real redis-server, a real in-process engine on the tiny demo model, ``run_job`` as a task runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tnllm.config import Settings
from tnllm.engine import Engine
from tnllm.protocol.jobs import GenerationParams, JobErrorType, JobStatus
from tnllm.worker.job_runner import JobOutcome, run_job
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Iterator[Engine]:
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import load_tokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more threads on a shared machine
    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32).eval()
    eng = Engine(model, load_tokenizer(demo_model_dir), slots=2, prefill_token_budget=64)
    eng.start()
    yield eng
    eng.stop(timeout=5)
    torch.set_num_threads(before)


@pytest.fixture
def runtime(redis_url: str, engine: Engine) -> Iterator[WorkerRuntime]:
    settings = Settings(
        redis_url=redis_url, lease_ttl=30.0, debug_faults=True, job_time_limit=0.3, stream_flush_interval=0.02
    )
    rt = WorkerRuntime(settings, hostname="runner@test")
    rt.engine = engine
    rt.pump.start()
    yield rt
    rt.engine = None  # the module's engine outlives this runtime
    rt.close()


def _create(rt: WorkerRuntime, job_id: str, metadata: dict[str, Any] | None = None, **params: Any) -> None:
    generation = GenerationParams(prompt="hi", **params)
    created = rt.store.create(job_id=job_id, owner="o", params=generation, metadata=metadata)
    assert created.kind == "created"


def test_a_job_that_runs_succeeds(runtime: WorkerRuntime) -> None:
    _create(runtime, "ok", max_new_tokens=4)
    assert run_job(runtime, "ok") is JobOutcome.SUCCEEDED
    record = runtime.store.get("ok")
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.error is None
    # a second delivery of the finished job is skipped, and says why
    assert run_job(runtime, "ok") is JobOutcome.SKIPPED_SUCCEEDED


def test_a_delivery_of_an_unknown_job_is_skipped_as_unknown(runtime: WorkerRuntime) -> None:
    outcome = run_job(runtime, "never-created")
    assert outcome is JobOutcome.SKIPPED_UNKNOWN and outcome == "skipped:unknown"  # was "skipped:None"


def test_a_request_the_engine_refuses_fails_as_invalid_request(runtime: WorkerRuntime) -> None:
    # within the contract's ranges, but beyond what this engine holds (its context limit)
    _create(runtime, "bad", max_new_tokens=runtime.engine.max_context)
    assert run_job(runtime, "bad") is JobOutcome.FAILED
    record = runtime.store.get("bad")
    assert record is not None and record.error is not None
    assert record.error.type == JobErrorType.INVALID_REQUEST and "context limit" in record.error.message


def test_a_job_over_its_time_limit_fails_as_timeout(runtime: WorkerRuntime) -> None:
    _create(runtime, "slow", metadata={"tnllm_debug": {"delay": 5}}, max_new_tokens=4)  # held past 0.3 s
    assert run_job(runtime, "slow") is JobOutcome.FAILED
    record = runtime.store.get("slow")
    assert record is not None and record.error is not None
    assert record.error.type == JobErrorType.TIMEOUT


def test_outcome_constructors_cover_every_state_and_action() -> None:
    for status in JobStatus:
        assert JobOutcome.skipped(status) == f"skipped:{status.value}"
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert JobOutcome.finished(status) == status.value
    assert JobOutcome.released("requeued") is JobOutcome.RELEASED_REQUEUED
    assert JobOutcome.released("cancelled") is JobOutcome.RELEASED_CANCELLED
    assert JobOutcome.released("not_owner") is JobOutcome.RELEASED_NOT_OWNER
