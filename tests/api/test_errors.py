"""Every refusal is JSON naming the problem: 422 per field, 413 for size, 503 while Redis is down."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tnllm.api.main import create_app
from tnllm.config import Settings
from tnllm.model.demo_tokenizer import write_tokenizer_files
from tnllm.store import JobResult, JobStatus, JobStore
from tnllm.store.server import RedisServer

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "hi"', "body"),  # malformed JSON
        (b"[1, 2]", "body"),
        (b'{"prompt": 5}', "prompt"),
        (b'{"prompt": "hi", "max_new_tokens": "many"}', "max_new_tokens"),
        (b'{"prompt": "hi", "temperature": "hot"}', "temperature"),
        (b'{"prompt": "hi", "stop": "x"}', "stop"),
        (b'{"prompt": "hi", "metadata": [1]}', "metadata"),
        (b'{"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}', "messages"),
        (b"{}", "messages"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"prompt": "hi", "max_new_tokens": 5000}', "max_new_tokens"),
        (b'{"prompt": "hi", "max_new_tokens": 0}', "max_new_tokens"),
        (b'{"prompt": "hi", "priority": 10}', "priority"),
        (b'{"prompt": "hi", "priority": -1}', "priority"),
        (b'{"prompt": "hi", "top_p": 0}', "top_p"),
        (b'{"prompt": "hi", "stop": [""]}', "stop"),
        (b'{"prompt": "hi", "stop": ["a","b","c","d","e","f","g","h","i"]}', "stop"),
        (b'{"prompt": "hi", "bogus": 1}', "bogus"),
        (b'{"prompt": "hi", "metadata": {"k": "' + b"x" * 5000 + b'"}}', "metadata"),
        # lone surrogates are valid JSON escapes but not text: refused, never a 500
        (b'{"prompt": "\\ud800"}', "prompt"),
        (b'{"prompt": "hi", "metadata": {"a": ["\\udfff"]}}', "metadata"),
        (b'{"prompt": "hi", "stop": ["\\ud800"]}', "stop"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    ],
)
async def test_422_names_the_field(client: httpx.AsyncClient, body: bytes, field: str) -> None:
    r = await client.post("/v1/jobs", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["field"] == field
    assert field in error["message"]
    assert (await client.get("/v1/jobs")).json()["data"] == []  # nothing stored


async def test_json_needs_json_content_type(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/jobs", content=b'{"prompt": "hi"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    assert "Content-Type: application/json" in r.json()["error"]["message"]


async def test_body_too_large_by_content_length(client: httpx.AsyncClient, settings: Settings) -> None:
    body = b'{"prompt": "' + b"a" * settings.max_body_bytes + b'"}'
    r = await client.post("/v1/jobs", content=body, headers=JSON)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large" and r.json()["error"]["field"] == "body"


async def test_body_too_large_when_streamed(client: httpx.AsyncClient, settings: Settings) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
        yield b'{"prompt": "'
        for _ in range(settings.max_body_bytes // 1024 + 1):
            yield b"a" * 1024
        yield b'"}'

    r = await client.post("/v1/jobs", content=chunks(), headers=JSON)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


async def test_prompt_too_long_without_tokenizer(client: httpx.AsyncClient, settings: Settings) -> None:
    # No model folder: a byte bound of 8 bytes per allowed token applies.
    ok = await client.post("/v1/jobs", json={"prompt": "a" * (settings.max_prompt_tokens * 8)})
    assert ok.status_code == 202
    r = await client.post("/v1/jobs", json={"prompt": "a" * (settings.max_prompt_tokens * 8 + 1)})
    assert r.status_code == 413
    assert r.json()["error"]["field"] == "prompt" and r.json()["error"]["type"] == "prompt_too_long"


@pytest.fixture(scope="module")
def demo_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "demo-model"
    write_tokenizer_files(folder, 1024)
    return folder


async def test_prompt_too_long_counted_in_tokens(
    make_settings: Callable[..., Settings], demo_tokenizer_dir: Path
) -> None:
    settings = make_settings(model=str(demo_tokenizer_dir), max_prompt_tokens=200, max_context=300)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            counter = app.state.services.counter
            assert counter.tokenizer() is not None
            short = await c.post("/v1/jobs", json={"prompt": "hello", "max_new_tokens": 8})
            assert short.status_code == 202, short.text
            # ~1000 bytes: under the byte bound (200 * 8), but over 200 tokens
            long_prompt = " ".join(f"w{i}" for i in range(200))
            assert len(long_prompt.encode()) < 200 * 8
            r = await c.post("/v1/jobs", json={"prompt": long_prompt})
            assert r.status_code == 413, r.text
            assert r.json()["error"]["field"] == "prompt" and "tokens" in r.json()["error"]["message"]
            r = await c.post("/v1/jobs", json={"messages": [{"role": "user", "content": long_prompt}]})
            assert r.status_code == 413 and r.json()["error"]["field"] == "messages"
            # prompt + max_new_tokens beyond the context
            r = await c.post("/v1/jobs", json={"prompt": "hello", "max_new_tokens": 250})
            assert r.status_code == 422 and r.json()["error"]["field"] == "max_new_tokens"


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = await client.delete("/v1/jobs")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


async def test_503_while_redis_is_down(
    redis_factory: Callable[..., RedisServer], make_settings: Callable[..., Settings]
) -> None:
    server = redis_factory()
    app = create_app(make_settings(redis_url=server.url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            job = (await c.post("/v1/jobs", json={"prompt": "before"})).json()
            server.stop()  # clean shutdown: SIGKILL could drop the last second of AOF
            for r in (
                await c.post("/v1/jobs", json={"prompt": "during"}),
                await c.get(f"/v1/jobs/{job['id']}"),
                await c.get("/v1/jobs"),
                await c.post(f"/v1/jobs/{job['id']}/cancel"),
            ):
                assert r.status_code == 503, r.text
                assert int(r.headers["retry-after"]) > 0
                assert r.json()["error"]["type"] == "unavailable"
                assert "id" not in r.json()  # never an id that was not stored
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            server.start()
            # the first request after the restart already works: stale pooled connections are retried
            r = await c.get(f"/v1/jobs/{job['id']}")
            assert r.status_code == 200 and r.json()["status"] == "queued"  # persisted across the restart
            after = await c.post("/v1/jobs", json={"prompt": "after"})
            assert after.status_code == 202
            ids = {j["id"] for j in (await c.get("/v1/jobs")).json()["data"]}
            assert ids == {job["id"], after.json()["id"]}  # the refused submission left nothing
            # the finish notifications resumed too: ?wait is woken at once, not by its 5 s re-check
            store = JobStore.from_settings(make_settings(redis_url=server.url))
            await asyncio.sleep(1.5)  # the watcher's reconnect backoff
            timer = threading.Timer(0.3, lambda: _finish(store, after.json()["id"]))
            start = time.monotonic()
            timer.start()
            r = await c.get(f"/v1/jobs/{after.json()['id']}", params={"wait": 8})
            timer.join()
            store.client.close()
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "succeeded" and time.monotonic() - start < 3


def _finish(store: JobStore, job_id: str) -> None:
    assert store.claim(job_id, "w").won
    assert store.finish(job_id, "w", JobStatus.SUCCEEDED, result=JobResult(text="", finish_reason="stop"))
