"""The OpenAI-compatible routes driven by the real ``openai`` package against a real stack
(redis-server, a Celery worker on the demo model, uvicorn), one stack for the module."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from standardwebhooks import Webhook

from tests.fixtures.services import Stack
from tests.webhooks.conftest import SECRET, Receiver, WorkerProcess, receiver_factory, webhook_worker_factory  # noqa: F401 (fixtures)
from tnllm.store import ChatMessage, GenerationParams
from tnllm.store.server import RedisServer
from tnllm.text.prompt import render_prompt
from tnllm.text.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow

MODEL = "tnllm-demo"
KEY_A, KEY_B = "key-alpha", "key-bravo"
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def stack(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s = Stack(
        module_redis.url,
        demo_model_dir,
        tmp_path_factory.mktemp("openai"),
        TNLLM_ENGINE_SLOTS="8",
        TNLLM_DEBUG_FAULTS="1",
        TNLLM_SERVED_MODEL_NAME=MODEL,
        TNLLM_API_KEYS=f"{KEY_A},{KEY_B}",
        TNLLM_BATCH_POLL_INTERVAL="0.3",
        TNLLM_WEBHOOK_SECRET=SECRET,
        TNLLM_WEBHOOK_ALLOWLIST="127.0.0.1",
    )
    s.start_worker("w1")
    s.start_api()
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=KEY_A, max_retries=0, timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    return load_tokenizer(demo_model_dir)


def _jobs(stack: Stack, key: str = KEY_A) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{stack.api_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, params={"limit": 100}
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY_A}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _wait_status(stack: Stack, job_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := _job(stack, job_id))["status"] != status:
        assert time.monotonic() < deadline, (job["status"], job["attempts"], job["started_at"])
        time.sleep(0.1)
    return job


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.object == "model" and model.owned_by == "tnllm" and model.created > 1_700_000_000
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_chat_stream_concatenates_to_the_non_streamed_answer(
    client: openai.OpenAI, stack: Stack, tokenizer: Any
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and choice.message.content
    expected_prompt = render_prompt(
        tokenizer, GenerationParams(messages=[ChatMessage(**m) for m in messages]), None
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(expected_prompt), 12)
    assert answer.usage.total_tokens == len(expected_prompt) + 12
    # an ordinary job underneath, listed with the caller's jobs
    job = _job(stack, answer.id.removeprefix("chatcmpl-"))
    assert job["status"] == "succeeded" and job["result"]["text"] == choice.message.content
    assert job["priority"] == 5  # TNLLM_OPENAI_PRIORITY: above the batches' 0

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_chat_text_parts_equal_string_content(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "ab cd"}], **GREEDY
    )
    parts = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "ab "}, {"type": "text", "text": "cd"}]}
        ],
        **GREEDY,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage == plain.usage


def test_completions_list_of_prompts_one_choice_each(client: openai.OpenAI, tokenizer: Any) -> None:
    prompts = ["The cat", "Once upon a time"]
    both = client.completions.create(model=MODEL, prompt=prompts, **GREEDY)
    assert [c.index for c in both.choices] == [0, 1]
    singles = [client.completions.create(model=MODEL, prompt=p, **GREEDY) for p in prompts]
    assert [c.text for c in both.choices] == [s.choices[0].text for s in singles]
    # the prompt is continued as it is: no chat template around it
    assert both.usage is not None
    assert both.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)
    assert both.usage.completion_tokens == 24
    ids = client.completions.create(model=MODEL, prompt=tokenizer.encode(prompts[1]), **GREEDY)
    assert ids.choices[0].text == singles[1].choices[0].text

    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in client.completions.create(model=MODEL, prompt=prompts, stream=True, **GREEDY):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert [streamed[0], streamed[1]] == [c.text for c in both.choices]


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _prefills(stack: Stack) -> float:
    """The worker's tnllm_engine_prefills_total (its Prometheus port is in its heartbeat)."""
    store = stack.store()
    try:
        (info,) = [w for w in store.workers() if w.model_loaded]
    finally:
        store.client.close()
    text = httpx.get(f"http://127.0.0.1:{info.metrics_port}/metrics", timeout=10).text
    return next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("tnllm_engine_prefills_total")
    )


def test_n_choices_seed_logprobs_and_json_schema(client: openai.OpenAI, stack: Stack) -> None:
    hi: list[Any] = [{"role": "user", "content": "Hello"}]
    before = _prefills(stack)
    while True:  # let the reports of earlier requests land (the engine reports every 0.25 s)
        time.sleep(0.6)
        settled = _prefills(stack)
        if settled == before:
            break
        before = settled
    three = client.chat.completions.create(model=MODEL, messages=hi, n=3, **GREEDY)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) == 1  # greedy: three equal choices
    assert three.usage is not None and three.usage.completion_tokens == 36  # every choice counts
    deadline = time.monotonic() + 10  # the engine reports its stats every 0.25 s
    while _prefills(stack) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _prefills(stack) == before + 1  # one prefill, its state copied into the three slots

    sampled = {"temperature": 1.0, "seed": 7, "max_tokens": 12}
    first, again = (client.chat.completions.create(model=MODEL, messages=hi, **sampled) for _ in range(2))
    assert first.choices[0].message.content == again.choices[0].message.content

    scored = client.chat.completions.create(model=MODEL, messages=hi, logprobs=True, top_logprobs=2, **GREEDY)
    content = scored.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 12  # one entry per completion token
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
    legacy = client.completions.create(model=MODEL, prompt="Once", logprobs=2, **GREEDY)
    shaped = legacy.choices[0].logprobs
    assert shaped is not None and len(shaped.tokens or []) == 12 and len(shaped.top_logprobs or []) == 12
    assert "".join(shaped.tokens or []) == legacy.choices[0].text

    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    person = client.chat.completions.create(
        model=MODEL, messages=hi, response_format=fmt, temperature=0, max_tokens=64
    )
    jsonschema.validate(json.loads(person.choices[0].message.content or ""), SCHEMA)


def test_streamed_choices_add_up_to_the_answer(client: openai.OpenAI) -> None:
    hi: list[Any] = [{"role": "user", "content": "Tell me"}]
    sampled = {"temperature": 1.0, "seed": 3, "max_tokens": 10, "n": 2, "extra_body": {"ignore_eos": True}}
    answer = client.chat.completions.create(model=MODEL, messages=hi, **sampled)
    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in client.chat.completions.create(model=MODEL, messages=hi, stream=True, **sampled):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert [streamed[0], streamed[1]] == [c.message.content for c in answer.choices]


def _bad(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    err = info.value
    assert err.status_code == 400
    body = err.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs: true
        ({"temperature": 9}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0].type"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"extra_body": {"top_k": -1}}, "top_k"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"max_tokens": "4"}, "max_tokens"),  # strict types, as every body of the API
        ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
    ],
)  # fmt: skip
def test_bad_chat_parameters_are_named(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    call: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    assert _bad(lambda: client.chat.completions.create(**call)).param == param


def test_bad_completion_parameters_are_named(client: openai.OpenAI) -> None:
    assert _bad(lambda: client.completions.create(model=MODEL, prompt="x", suffix="y")).param == "suffix"
    assert _bad(lambda: client.completions.create(model=MODEL, prompt="x", best_of=2)).param == "best_of"
    assert _bad(lambda: client.completions.create(model=MODEL, prompt="x", echo=True)).param == "echo"
    missing = _bad(lambda: client.chat.completions.create(model=MODEL, messages=[]))
    assert missing.param == "messages"


def test_malformed_json_is_an_openai_shaped_400(stack: Stack) -> None:
    answer = httpx.post(
        f"{stack.api_url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "body"
    assert "malformed JSON" in error["message"]
    huge = httpx.post(
        f"{stack.api_url}/v1/completions",
        json={"model": MODEL, "prompt": "x" * (2 << 20)},
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"
    native = httpx.post(f"{stack.api_url}/v1/jobs", content=b"{", headers={"Authorization": f"Bearer {KEY_A}",
                        "Content-Type": "application/json"})  # fmt: skip
    assert native.status_code == 422 and native.json()["error"]["type"] == "invalid_request"  # its own shape


def test_api_keys_are_bearer_and_errors_openai_shaped(stack: Stack) -> None:
    wrong = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.code == "invalid_api_key"
    assert isinstance(info.value.body, dict) and set(info.value.body) == {"message", "type", "param", "code"}
    answer = httpx.post(f"{stack.api_url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


def _only_new_job(stack: Stack, before: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not (new := [j["id"] for j in _jobs(stack) if j["id"] not in before]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(new) == 1
    return str(new[0])


def test_client_disconnect_cancels_its_job(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "slow"}], "max_tokens": 4,
            "metadata": {"tnllm_debug": {"delay": 30}}}  # fmt: skip
    url = f"{stack.api_url}/v1/chat/completions"
    before = {j["id"] for j in _jobs(stack)}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting
        httpx.post(url, json=body, headers=headers, timeout=httpx.Timeout(30, read=1.5))
    job_id = _only_new_job(stack, before)
    assert _wait_status(stack, job_id, "cancelled")["result"]["finish_reason"] == "cancelled"

    before.add(job_id)
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines()  # kept: dropping the iterator closes the response
        first = next(lines)
        assert first.startswith("data: ") and '"role": "assistant"' in first
        job_id = _only_new_job(stack, before)
        _wait_status(stack, job_id, "running")
    _wait_status(stack, job_id, "cancelled")


# --- the Batch API (the SIGKILL test stays last: it replaces the worker and the API) ----------


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0,
               "max_tokens": 4, "ignore_eos": True, **body}  # fmt: skip
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}


def _wait_batch(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in statuses:
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    return batch


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_of_chat_requests_with_a_refused_line(client: openai.OpenAI) -> None:
    lines = [_chat_line(f"req-{i}", f"question {i}") for i in range(5)]
    lines.append(_chat_line("bad", "x", tools=[{"type": "function", "function": {"name": "f"}}]))
    upload = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(_jsonl(lines))
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating" and batch.request_counts is not None
    assert batch.request_counts.total == 6
    done = _wait_batch(client, batch.id, {"completed", "failed"})
    assert done.status == "completed" and done.completed_at is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)  # type: ignore[union-attr]
    out = _lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"req-{i}" for i in range(5)]
    direct = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "question 3"}], temperature=0, max_tokens=4,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    answer = next(o for o in out if o["custom_id"] == "req-3")["response"]
    assert answer["status_code"] == 200 and answer["body"]["object"] == "chat.completion"
    assert answer["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    (refused,) = _lines(client, done.error_file_id)
    assert refused["custom_id"] == "bad" and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "tools"
    assert done.id in [b.id for b in client.batches.list()]


def test_malformed_batch_file_fails_naming_the_line(client: openai.OpenAI) -> None:
    data = _jsonl([_chat_line("a", "x")]) + b"{not json\n"
    upload = client.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].line == 2
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert info.value.param == "endpoint"


def test_cancel_a_batch(client: openai.OpenAI) -> None:
    lines = [_chat_line(f"slow-{i}", "x", metadata={"tnllm_debug": {"delay": 30}}) for i in range(12)]
    upload = client.files.create(file=("slow.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    _wait_batch(client, batch.id, {"in_progress"})  # all 12 jobs made (the first ones held running)
    started = time.monotonic()
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = _wait_batch(client, batch.id, {"cancelled"}, timeout=20)
    assert time.monotonic() - started < 20  # nobody waited for the 30 s jobs
    assert done.output_file_id is None and done.request_counts.failed == 12  # type: ignore[union-attr]
    errors = _lines(client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == sorted(f"slow-{i}" for i in range(12))
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_one_key_cannot_see_another_keys_files_or_batches(client: openai.OpenAI, stack: Stack) -> None:
    upload = client.files.create(file=("mine.jsonl", _jsonl([_chat_line("a", "x")])), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=KEY_B, max_retries=0) as other:
        for call in (
            lambda: other.files.retrieve(upload.id),
            lambda: other.files.content(upload.id),
            lambda: other.files.delete(upload.id),
            lambda: other.batches.retrieve(batch.id),
            lambda: other.batches.cancel(batch.id),
            lambda: other.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                         completion_window="24h"),
        ):  # fmt: skip
            with pytest.raises(openai.NotFoundError):
                call()
        assert upload.id not in [f.id for f in other.files.list()]
        assert batch.id not in [b.id for b in other.batches.list()]
    _wait_batch(client, batch.id, {"completed"})
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_batch_final_status_comes_as_a_signed_webhook(
    client: openai.OpenAI,
    stack: Stack,
    receiver_factory: Callable[..., Receiver],  # noqa: F811
    webhook_worker_factory: Callable[..., WorkerProcess],  # noqa: F811
) -> None:
    receiver = receiver_factory(script=[500], default=200)  # the first attempt is retried
    webhook_worker_factory(stack.redis_url)
    upload = client.files.create(file=("hook.jsonl", _jsonl([_chat_line("a", "x")])), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_body={"webhook": {"url": receiver.url, "events": ["batch.completed"]}},
    )  # fmt: skip
    done = _wait_batch(client, batch.id, {"completed"})
    hits = receiver.wait_hits(2)
    events = [Webhook(SECRET).verify(hit.body, hit.headers) for hit in hits]
    assert [e["type"] for e in events] == ["batch.completed"] * 2
    assert len({hit.headers["webhook-id"] for hit in hits}) == 1  # one event, retried
    assert events[0]["data"]["id"] == batch.id and events[0]["data"]["status"] == "completed"
    assert events[0]["data"]["output_file_id"] == done.output_file_id
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            extra_body={"webhook": {"url": "http://169.254.169.254/latest"}},
        )  # fmt: skip
    assert info.value.param == "webhook.url"


def test_50_line_batch_completes_once_each_across_worker_sigkill_and_api_restart(stack: Stack) -> None:
    # The first lines hold their jobs running for a while, so the kill lands mid-batch.
    slow = {"metadata": {"tnllm_debug": {"delay": 2}}}
    lines = [_chat_line(f"line-{i}", f"item {i}", **(slow if i < 8 else {})) for i in range(50)]
    with openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=KEY_A, max_retries=0) as c:
        upload = c.files.create(file=("fifty.jsonl", _jsonl(lines)), purpose="batch")
        batch = c.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    store = stack.store()
    try:
        deadline = time.monotonic() + 30
        while not store.client.zcard("tnllm:running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        store.client.close()
    worker = next(c for c in stack.children if c.name == "w1")
    api = next(c for c in stack.children if c.name == "api")
    worker.signal(signal.SIGKILL)
    api.signal(signal.SIGKILL)
    stack.start_worker("w2")
    stack.start_api("api2")
    with openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=KEY_A, max_retries=0) as c:
        done = _wait_batch(c, batch.id, {"completed", "failed", "cancelled"}, timeout=120)
        assert done.status == "completed", done
        assert done.request_counts is not None and done.request_counts.completed == 50
        out = _lines(c, done.output_file_id)
        assert done.error_file_id is None
    assert sorted(o["custom_id"] for o in out) == sorted(f"line-{i}" for i in range(50))  # each exactly once
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert {_job(stack, o["response"]["request_id"])["priority"] for o in out} == {0}  # TNLLM_BATCH_PRIORITY
    restarted = [_job(stack, o["response"]["request_id"])["attempts"] for o in out]
    assert max(restarted) >= 2  # some ran again after the kill
