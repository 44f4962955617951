"""Strict input on every route: no coercion of the schema's types, no NaN/Infinity, a nesting-depth
limit answered before any recursive parser runs, and one 422 shape for every malformed body."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.api.conftest import LiveServer
from tnllm.api.body import nesting_depth_exceeds

JSON = {"Content-Type": "application/json"}
#: Every route that takes a POST (the body is checked before routing reaches them).
POST_ROUTES = ["/v1/jobs", "/", "/v1/jobs/nope/cancel", "/v1/jobs/nope/webhook/redeliver"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", True),
        ("max_new_tokens", "4"),
        ("max_new_tokens", 4.0),
        ("top_k", 1.0),
        ("seed", "7"),
        ("priority", "1"),
        ("priority", 1.5),
        ("temperature", "0.5"),
        ("temperature", True),
        ("top_p", "1"),
        ("ignore_eos", 1),
        ("ignore_eos", "true"),
        ("stop", "x"),
        ("prompt", 5),
    ],
)
async def test_no_coercion(client: httpx.AsyncClient, field: str, value: object) -> None:
    r = await client.post("/v1/jobs", json={"prompt": "hi", "max_new_tokens": 4, field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["type"] == "invalid_request"
    assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_what_json_gives_is_taken_as_it_is(client: httpx.AsyncClient) -> None:
    """An integer where the schema says number is a number; arrays are the contract's tuples."""
    body = {"prompt": "hi", "max_new_tokens": 4, "temperature": 1, "top_p": 1, "stop": ["a", "b"]}
    r = await client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["temperature"] == 1.0 and job["stop"] == ["a", "b"]


@pytest.mark.parametrize("route", ["/v1/jobs", "/"])
@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"prompt": "hi", "metadata": {"x": NaN}}', "NaN is not valid JSON"),
        (b'{"prompt": "hi", "metadata": {"x": [-Infinity]}}', "-Infinity is not valid JSON"),
        (b'{"prompt": "hi", "temperature": Infinity}', "Infinity is not valid JSON"),
        (b'{"prompt": "hi", "metadata": {"x": 1e400}}', "number out of range: 1e400"),
        (b'{"prompt": "hi"', "malformed JSON"),
        (b'{"prompt": "hi", "metadata": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
    ],
)
async def test_malformed_bodies_one_answer(
    client: httpx.AsyncClient, route: str, raw: bytes, why: str
) -> None:
    r = await client.post(route, content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request" and error["field"] == "body"
    assert error["message"].startswith(f"body: {why}") and error["details"][0]["field"] == "body"
    assert (await client.get("/v1/jobs")).json()["data"] == []  # nothing stored (not even as null)


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_every_route_answers_a_deep_body_alike(client: httpx.AsyncClient, route: str) -> None:
    r = await client.post(route, content=b"[" * 2000 + b"]" * 2000, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "body: nested deeper than 32 levels"


async def test_depth_limit_is_exact(client: httpx.AsyncClient) -> None:
    # the body object is level 1, metadata level 2: 30 more arrays make 32
    ok = b'{"prompt": "hi", "max_new_tokens": 1, "metadata": {"a": ' + b"[" * 30 + b"]" * 30 + b"}}"
    assert (await client.post("/v1/jobs", content=ok, headers=JSON)).status_code == 202
    deep = ok.replace(b"[" * 30, b"[" * 31).replace(b"]" * 30, b"]" * 31)
    assert (await client.post("/v1/jobs", content=deep, headers=JSON)).status_code == 422


def test_depth_scan_skips_strings() -> None:
    assert not nesting_depth_exceeds(b'{"a": "' + b"[{" * 100 + b'\\"[["}', 4)
    assert not nesting_depth_exceeds(b"[" * 4 + b'"' + b'\\"' * 10_000 + b"[[[", 4)  # unterminated
    assert nesting_depth_exceeds(b"[" * 5, 4) and not nesting_depth_exceeds(b"[[[[]]]]", 4)


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 request on ``sock`` and read its (Content-Length framed) answer."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("route", ["/", "/v1/jobs"])
def test_deep_body_keeps_the_connection(live_server: LiveServer, route: str) -> None:
    """The 2,000-deep body (4 KB) used to be a 500 and a reset connection: now a 422, and the next
    request on the same keep-alive connection is answered."""
    deep = b"[" * 2000 + b"]" * 2000
    post = (
        f"POST {route} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(deep)}\r\n\r\n"
    ).encode() + deep
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=20) as sock:
        status, headers, body = _exchange(sock, post)
        assert status == 422 and json.loads(body)["error"]["field"] == "body"
        assert headers.get("connection") != "close"
        status, _, body = _exchange(sock, b"GET /v1/jobs HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 200 and json.loads(body)["data"] == []


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/jobs", {"prompt": "hi", "max_new_tokens": 5000}, "max_new_tokens"),  # a deployment limit
        ("/v1/jobs", {"prompt": "hi", "priority": "1"}, "priority"),  # a type
        ("/", {"prompt": 5}, "prompt"),
        ("/", {"prompt": ["hi"]}, "prompt"),
    ],
)
async def test_every_422_has_one_shape(
    client: httpx.AsyncClient, route: str, body: object, field: str
) -> None:
    r = await client.post(route, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request" and error["field"] == field
    assert error["message"].startswith(f"{field}: ") and error["details"][0]["field"] == field
