"""``tnllm.client`` against a real stack (redis-server, a Celery worker on the demo model, uvicorn),
with a TCP proxy in between where a test needs the network to fail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.client.proxy import Fault, Proxy
from tests.e2e.client import debug
from tests.fixtures.services import Stack
from tnllm.client import (
    ApiConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    DoneEvent,
    InvalidRequest,
    JobCreate,
    JobPublic,
    JobTerminal,
    NotFound,
    NoWebhookEvent,
    RetryPolicy,
    TokenEvent,
    WaitTimeout,
)
from tnllm.client.errors import ERROR_TYPES
from tnllm.store.server import free_port

pytestmark = pytest.mark.slow

FAST = RetryPolicy(retries=3, backoff=0.05, max_backoff=0.2)
#: A job long enough to be cut mid-stream: the demo model never stops by itself with ignore_eos.
LONG = {"max_new_tokens": 1000, "ignore_eos": True}


@pytest.fixture
def client(client_stack: Stack) -> Iterator[Client]:
    with Client(client_stack.api_url, retry=FAST) as c:
        yield c


@pytest.fixture
def proxy(client_stack: Stack) -> Iterator[Proxy]:
    parts = urlsplit(client_stack.api_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 80))
    yield p
    p.close()


def _text(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


def test_submit_wait_and_typed_results(client: Client) -> None:
    job = client.submit("Tell me a story", max_new_tokens=8, priority=3, metadata={"k": "v"}, seed=1)
    assert isinstance(job, JobPublic) and job.status in ("queued", "running")
    assert (job.max_new_tokens, job.priority, job.metadata, job.seed) == (8, 3, {"k": "v"}, 1)
    final = client.wait(job.id, timeout=60)
    assert final.status == "succeeded" and final.result is not None
    assert 0 < final.result.usage.completion_tokens <= 8 and final.result.usage.prompt_tokens > 0
    assert client.get(job.id) == final
    # a ready JobCreate body (messages instead of a prompt) is sent as it is
    body = JobCreate(messages=[{"role": "user", "content": "hi"}], max_new_tokens=3)
    chat = client.wait(client.submit(body=body).id, timeout=60)
    assert chat.messages is not None and chat.messages[0].content == "hi" and chat.status == "succeeded"


def test_bad_fields_are_refused_before_sending_as_the_api_words_them(client: Client) -> None:
    with pytest.raises(InvalidRequest) as local:
        client.submit("x", max_new_tokens=0)
    assert local.value.field == "max_new_tokens" and str(local.value).startswith("max_new_tokens: ")
    with pytest.raises(InvalidRequest, match="unknown_field"):
        client.submit("x", unknown_field=1)
    # a limit only the server knows: its 422 becomes the same exception, naming the field
    with pytest.raises(InvalidRequest) as remote:
        client.submit("x", max_new_tokens=100_000)
    assert remote.value.status == 422 and remote.value.field == "max_new_tokens"


def test_stream_yields_every_token_then_the_job(client: Client) -> None:
    job = client.submit("Count with me", max_new_tokens=24, ignore_eos=True)
    events = list(client.stream(job.id))
    assert isinstance(events[-1], DoneEvent) and events[-1].job.status == "succeeded"
    assert events[-1].job.result is not None and _text(events) == events[-1].job.result.text
    # replayed from the start after the end, and after a given event id
    again = list(client.stream(job.id))
    assert _text(again) == _text(events)
    middle = events[len(events) // 2]
    rest = list(client.stream(job.id, last_event_id=middle.id))
    assert _text(events[: len(events) // 2 + 1]) + _text(rest) == _text(events)


def test_stream_resumes_after_the_server_side_drops_the_connection(client_stack: Stack, proxy: Proxy) -> None:
    """The proxy resets the stream's TCP connection twice mid-stream; the client resumes with
    Last-Event-ID and yields every token exactly once."""
    proxy.faults = [Fault(b"/stream", "cut", after=3, times=2)]
    with Client(proxy.url, retry=FAST) as c:
        job = c.submit("Tell me everything", **LONG)
        events = list(c.stream(job.id))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.job.result is not None
    assert proxy.applied == ["cut", "cut"]
    streams = [r for r in proxy.requests if b"/stream" in r]
    assert len(streams) == 3 and b"last-event-id" not in streams[0].lower()
    assert all(re.search(rb"(?i)last-event-id: \d+-\d+", r) for r in streams[1:])
    assert _text(events) == done.job.result.text and done.job.result.usage.completion_tokens == 1000
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))


async def test_async_client_resumes_a_dropped_stream_too(client_stack: Stack, proxy: Proxy) -> None:
    proxy.faults = [Fault(b"/stream", "cut", after=2)]
    async with AsyncClient(proxy.url, retry=FAST) as c:
        job = await c.submit("Tell me more", **LONG)
        events = [e async for e in c.stream(job.id)]
        final = await c.wait(job.id, timeout=60)
        listed = [j.id async for j in c.list_jobs(limit=3)]
    assert proxy.applied == ["cut"] and final.result is not None
    assert _text(events) == final.result.text and events[-1] == DoneEvent(id=events[-1].id, job=final)
    assert job.id in listed


def test_a_lost_submit_answer_is_retried_into_the_same_job(client_stack: Stack, proxy: Proxy) -> None:
    """The server stores the job, the proxy drops its answer; the retry carries the same generated
    idempotency key, so the server replays the first job instead of making a second."""
    proxy.faults = [Fault(b"POST /v1/jobs", "swallow")]
    marker = {"probe": free_port()}
    with Client(proxy.url, retry=FAST) as c:
        job = c.submit("once", max_new_tokens=2, metadata=marker)
        mine = [j for j in c.list_jobs(page_size=100) if j.metadata == marker]
    posts = [r for r in proxy.requests if r.startswith(b"POST /v1/jobs")]
    assert proxy.applied == ["swallowed"] and len(posts) == 2
    keys = {re.search(rb"(?i)idempotency-key: (\w+)", r).group(1) for r in posts}  # type: ignore[union-attr]
    assert len(keys) == 1 and [j.id for j in mine] == [job.id]


def test_503_is_retried_with_its_retry_after(client_stack: Stack, proxy: Proxy) -> None:
    body = b'{"error":{"type":"unavailable","message":"redis is down"}}'
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 0\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    proxy.faults = [Fault(b"GET /v1/jobs", "answer", answer=answer, times=2)]
    with Client(proxy.url, retry=FAST) as c:
        assert list(c.list_jobs(limit=1))
        assert proxy.applied == ["answered", "answered"]
        proxy.faults = [Fault(b"GET /v1/jobs", "answer", answer=answer, times=9)]
        with pytest.raises(Exception, match="redis is down") as exc:
            list(c.list_jobs(limit=1))
    assert type(exc.value).__name__ == "Unavailable" and exc.value.status == 503  # type: ignore[attr-defined]


def test_cancel_and_its_conflict(client: Client) -> None:
    job = client.submit("wait for it", metadata=debug(delay=30))
    cancelled = client.cancel(job.id)
    assert cancelled.status == "cancelled" or (cancelled.status == "running" and cancelled.cancel_requested)
    assert client.wait(job.id, timeout=30).status == "cancelled"
    with pytest.raises(JobTerminal) as exc:
        client.cancel(job.id)
    assert exc.value.status == 409 and exc.value.job_status == "cancelled"


def test_list_iterates_every_page(client: Client) -> None:
    ids = [client.submit(f"page {i}", max_new_tokens=1).id for i in range(5)]
    for i in ids:
        client.wait(i, timeout=60)
    listed = [j.id for j in client.list_jobs(page_size=2)]
    assert listed[:5] == ids[::-1]  # newest first, across three pages
    assert [j.id for j in client.list_jobs(page_size=2, limit=3)] == ids[::-1][:3]
    assert all(j.status == "succeeded" for j in client.list_jobs("succeeded", page_size=2, limit=7))


def test_errors_are_typed(client_stack: Stack, client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.get("no-such-job")
    assert missing.value.status == 404 and missing.value.field == "id"
    with pytest.raises(NotFound):
        list(client.stream("no-such-job"))
    job = client.wait(client.submit("x", max_new_tokens=1).id, timeout=60)
    with pytest.raises(NoWebhookEvent):
        client.redeliver(job.id)
    with pytest.raises(WaitTimeout) as slow:
        client.wait(client.submit("slow", metadata=debug(delay=5)).id, timeout=0.5, long_poll=0.2)
    assert slow.value.job is not None and not slow.value.job.status.terminal
    with Client(f"http://127.0.0.1:{free_port()}", retry=FAST) as nowhere, pytest.raises(ApiConnectionError):
        nowhere.get("x")


def test_api_keys(client_stack: Stack) -> None:
    base = client_stack.api_url
    child, url = client_stack.start_api("api-keys", TNLLM_API_KEYS="sekret")
    client_stack.api_url = base
    try:
        with Client(url, retry=FAST) as anon, pytest.raises(AuthenticationError, match="missing API key"):
            anon.submit("hi")
        with Client(url, api_key="wrong", retry=FAST) as wrong, pytest.raises(AuthenticationError):
            wrong.get("x")
        with Client(url, api_key="sekret", retry=FAST) as keyed:
            assert keyed.wait(keyed.submit("hi", max_new_tokens=2).id, timeout=60).status == "succeeded"
    finally:
        child.stop()


def test_every_error_type_the_api_answers_has_its_class() -> None:
    """Each `type=` the API's code can answer (and each status default) maps to an exception. The
    OpenAI-compatible routes answer in OpenAI's shape, for OpenAI's clients: not scanned."""
    api = Path(__file__).resolve().parents[2] / "src" / "tnllm" / "api"
    source = "\n".join(p.read_text() for p in api.rglob("*.py") if "openai" not in str(p.relative_to(api)))
    answered = set(re.findall(r'type="([a-z_]+)"', source))
    answered |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",$', (api / "errors.py").read_text(), re.M))
    answered |= {"internal_error"}
    assert answered and answered <= set(ERROR_TYPES), answered - set(ERROR_TYPES)
