"""The receiver example of docs/WEBHOOKS.md, served by real uvicorn, gets and verifies a real delivery."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import uvicorn

from tests.webhooks.conftest import REPO, SECRET, run_job
from tests.webhooks.test_delivery import drive, make_ctx
from tnllm.store.sync import JobStore
from tnllm.webhooks.signing import Signer


def docs_receiver(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    text = (REPO / "docs" / "WEBHOOKS.md").read_text()
    section = text[text.index("## Verifying") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.setenv("TNLLM_WEBHOOK_SECRET", SECRET)  # the example reads its own environment
    module = ModuleType("docs_receiver")
    exec(compile(code.group(1), str(Path("docs/WEBHOOKS.md")), "exec"), module.__dict__)
    return module


@pytest.fixture
def receiver_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    app = docs_receiver(monkeypatch).app
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/tnllm"
    server.should_exit = True
    thread.join(5)


def test_docs_receiver_accepts_real_delivery_and_rejects_forgeries(
    redis_url: str, job_store: JobStore, receiver_url: str
) -> None:
    ctx = make_ctx(redis_url)
    run_job(job_store, "doc-job", receiver_url)
    assert drive(ctx) == ["delivered"]
    body = '{"type":"job.running","timestamp":"x","data":{"id":"x"}}'
    headers = Signer([SECRET]).headers("msg_forged", body)

    async def post(content: str, hdrs: dict[str, str]) -> int:
        async with httpx.AsyncClient() as client:
            return (await client.post(receiver_url, content=content, headers=hdrs)).status_code

    assert asyncio.run(post(body, headers)) == 200
    assert asyncio.run(post(body.replace('"x"}}', '"y"}}'), headers)) == 400  # tampered
    old = Signer([SECRET]).headers("msg_old", body, now=datetime.now(UTC) - timedelta(minutes=10))
    assert asyncio.run(post(body, old)) == 400  # validly signed, but replayed 10 minutes later
