"""The OpenAPI document states what the server does: the shared answers of every route, the running
Settings' limits as bounds, one error model (the live check is tests/api/test_schemathesis.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tnllm.api.contract import operations
from tnllm.api.main import create_app
from tnllm.config import Settings


def _doc(settings: Settings) -> dict[str, Any]:
    return create_app(settings).openapi()


def test_limits_are_bounds_of_the_running_settings(make_settings: Callable[..., Settings]) -> None:
    doc = _doc(make_settings(max_new_tokens_limit=77, max_stop_strings=3, wait_max_seconds=12.5))
    body = doc["components"]["schemas"]["JobCreate"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 77} in body["max_new_tokens"]["anyOf"]
    assert body["stop"]["maxItems"] == 3 and body["stop"]["items"]["maxLength"] == 256
    wait = next(p for p in doc["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "wait")
    assert wait["schema"]["maximum"] == 12.5
    # job answers stay unbounded: a record made under an earlier limit is still a valid answer
    assert "maximum" not in str(doc["components"]["schemas"]["JobPublic"]["properties"]["max_new_tokens"])


def test_unenforced_schemes_are_left_out(settings: Settings) -> None:
    doc = _doc(settings)  # no API keys, no metrics token: nothing answers 401
    assert all("security" not in op for _, _, op in operations(doc))


def test_every_operation_lists_the_shared_answers(make_settings: Callable[..., Settings]) -> None:
    doc = _doc(make_settings(api_keys=["k"], metrics_token="t" * 16))
    secured = {(path, method) for path, method, op in operations(doc) if "security" in op}
    assert ("get", "/metrics") not in secured and ("/metrics", "get") in secured
    assert ("/healthz", "get") not in secured and ("/v1/jobs", "post") in secured
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, method, op in operations(doc):
        codes = op["responses"]
        assert ("503" in codes) == (path != "/healthz"), (method, path)
        if "security" in op:
            assert "WWW-Authenticate" in codes["401"]["headers"], (method, path)
        if method == "post":  # any body sent is checked, even where none is taken
            assert {"413", "422"} <= set(codes), (method, path)
        if "requestBody" in op:
            assert "429" in codes, (method, path)
            assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= set(codes["429"]["headers"])
        for code, answer in codes.items():
            if code.startswith(("4", "5")) and path != "/readyz":
                assert answer["content"] == error, (method, path, code)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    links = doc["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
    assert {link["parameters"]["job_id"] for link in links.values()} == {"$response.body#/id"}
    assert len(links) == 6  # read, stream, cancel, redeliver, pause, resume


async def test_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    r = await client.request("OPTIONS", "/v1/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
