"""A job's parameters and prompt from the HTTP body to the engine, through the real app, Redis, the
worker's request building and the engine: one contract, one renderer, no field dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.protocol.test_sampling import BAD_VALUES
from tnllm.api.limits import PromptCounter
from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.engine.types import EngineRequest
from tnllm.errors import RequestRejected
from tnllm.store import ChatMessage, GenerationParams, JobRecord, JobStore
from tnllm.worker.job_runner import build_request
from tnllm.worker.runtime import WorkerRuntime


@pytest.fixture
def demo_settings(make_settings: Callable[..., Settings], demo_model_dir: Path) -> Settings:
    return make_settings(model=str(demo_model_dir), device="cpu", dtype="float32", engine_slots=64)


@pytest.fixture
async def demo_client(demo_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(demo_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as c:
            yield c


def make_runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    from tnllm.engine.factory import build_engine

    rt = WorkerRuntime(settings, hostname="contract@test")
    rt.engine = build_engine(settings)  # in-process, stepped by generate(): no threads
    yield rt
    rt.close()


@pytest.fixture
def runtime(demo_settings: Settings) -> Iterator[WorkerRuntime]:
    yield from make_runtime(demo_settings)


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
async def test_the_route_refuses_as_the_engine_does(
    client: httpx.AsyncClient, name: str, value: object, message: str
) -> None:
    r = await client.post("/v1/jobs", json={"prompt": "hi", "max_new_tokens": 4, name: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == message and r.json()["error"]["field"] == name
    with pytest.raises(RequestRejected) as engine:
        EngineRequest.from_json("r", [5], {"max_new_tokens": 4, name: value})
    assert str(engine.value) == message


async def _submit(client: httpx.AsyncClient, store: JobStore, **body: Any) -> JobRecord:
    """POST a job; the record the worker reads for it."""
    r = await client.post("/v1/jobs", json={"prompt": "Tell me a story", **body})
    assert r.status_code == 202, r.text
    record = store.get(r.json()["id"])
    assert record is not None
    return record


async def test_ignore_eos_reaches_the_engine_and_runs_past_eos(
    demo_client: httpx.AsyncClient, runtime: WorkerRuntime
) -> None:
    """ignore_eos was dropped between the body and the engine; now a job that asks for it runs to
    max_new_tokens past EOS, and the same job without it stops there."""
    new, seeds = 48, range(96, 128)  # seeds 100 and 126 draw EOS (counter-based draws, demo model)
    hot = {"max_new_tokens": new, "temperature": 5.0}
    runs: dict[bool, list[Any]] = {}
    for ignore in (True, False):
        requests = []
        for seed in seeds:
            record = await _submit(demo_client, runtime.store, seed=seed, ignore_eos=ignore, **hot)
            assert record.to_public().ignore_eos is ignore and record.params.ignore_eos is ignore
            requests.append(build_request(runtime, record))
        assert all(req.params.ignore_eos is ignore for req in requests)
        runs[ignore] = runtime.engine.generate(requests)
    eos = runtime.engine.eos_ids
    past = [i for i, r in enumerate(runs[True]) if set(r.token_ids[:-1]) & eos]
    assert past, "no seed produced EOS"
    assert all(r.finish_reason == "length" and r.completion_tokens == new for r in runs[True])
    for i in past:
        assert runs[False][i].finish_reason == "stop" and runs[False][i].completion_tokens < new


def _chat(*turns: tuple[str, str]) -> GenerationParams:
    return GenerationParams(messages=[ChatMessage(role=r, content=c) for r, c in turns])  # type: ignore[arg-type]


JOBS = [
    GenerationParams(prompt="How does linear attention work?"),
    _chat(("user", "hey"), ("assistant", "yo"), ("user", "again")),
    _chat(("system", "Be brief."), ("user", "q")),
]


@pytest.mark.parametrize("system_prompt", [None, "", "Answer in French."])
def test_the_apis_count_is_the_workers_prompt_length(
    make_settings: Callable[..., Settings], demo_model_dir: Path, system_prompt: str | None
) -> None:
    """Both count through render_prompt; with TNLLM_SYSTEM_PROMPT="" the worker used to add an empty
    system turn to prompt jobs that the API did not count."""
    extra = {} if system_prompt is None else {"system_prompt": system_prompt}
    settings = make_settings(
        model=str(demo_model_dir), device="cpu", dtype="float32", engine_slots=1, **extra
    )
    counter = PromptCounter(settings)
    for rt in make_runtime(settings):
        for i, job in enumerate(JOBS):
            params = job.resolved(settings.default_max_new_tokens)
            tokens, exact = counter.count(params)
            assert exact
            assert rt.store.create(job_id=f"j{i}", owner="o", params=params).kind == "created"
            record = rt.store.get(f"j{i}")
            assert record is not None
            assert tokens == len(build_request(rt, record).prompt_ids), job
