"""The OpenAPI document as the contract the server keeps, generated from the running Settings.

FastAPI describes what each route declares; this module adds what the app's shared parts answer
on every route, so that routes added later inherit it without declaring anything:

- 401 on every operation behind a bearer scheme the deployment enforces (API keys, the metrics
  token), ``WWW-Authenticate``; a scheme it does not enforce is left out of the document;
- 413 and 422 on every POST/PUT/PATCH (the size limit and the strict JSON check of
  ``tnllm.api.body`` look at any body sent), 429 on every operation that takes a body (the per-key
  limits of ``submit``) with ``Retry-After`` and the ``RateLimit`` headers;
- 503 (``Retry-After``) on every operation but ``/healthz``: Redis may be unreachable;
- every error answer's schema is ``ErrorResponse`` (FastAPI's default 422 model is not what the
  handlers answer);
- the deployment's limits as schema bounds: ``max_new_tokens`` ≤ TNLLM_MAX_NEW_TOKENS_LIMIT, at most
  TNLLM_MAX_STOP_STRINGS stop strings (each 1-256 characters), ``wait`` ≤ TNLLM_WAIT_MAX_SECONDS,
  at most 32 ``metadata`` keys;
- OpenAPI links from every answer that is a job object to the operations on that job (clients
  and schemathesis's stateful phase follow them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tnllm.api.body import BODY_METHODS
from tnllm.api.schemas import METADATA_MAX_KEYS, ErrorResponse
from tnllm.config import Settings
from tnllm.protocol.sampling import LOGIT_BIAS_MAX, STOP_MAX_CHARS

_REF = "#/components/schemas/"
_ERROR_REF = {"$ref": _REF + "ErrorResponse"}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
#: Methods whose body, if any, the middlewares check (``tnllm.api.body.BODY_METHODS``).
_BODY_METHODS = frozenset(m.lower() for m in BODY_METHODS)
#: Routes that answer without Redis.
NO_REDIS = frozenset({"/healthz"})
#: The path parameter naming a job (links fill it from the job object's ``id``).
JOB_PARAM = "job_id"


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


RETRY_AFTER = _header("Seconds to wait before retrying.", {"type": "integer", "minimum": 0})
_LIMIT_HEADERS = {
    "RateLimit-Policy": _header("The per-key policies (IETF httpapi RateLimit fields), when limits are on."),
    "RateLimit": _header("What is left of each policy, and for how many seconds."),
}
_SHARED: dict[str, tuple[str, dict[str, Any]]] = {
    "401": ("Missing or invalid API key", {"WWW-Authenticate": _header("`Bearer`.")}),
    "413": ("Body (TNLLM_MAX_BODY_BYTES) or prompt (TNLLM_MAX_PROMPT_TOKENS) over the limits", {}),
    "422": ("Invalid request: `field` names the culprit (`body` for a malformed body)", {}),
    "429": (
        "Queue full, or this key over its rate limit or token quota (`policy` says which)",
        {"Retry-After": RETRY_AFTER, **_LIMIT_HEADERS},
    ),
    "503": ("Redis unreachable", {"Retry-After": RETRY_AFTER}),
}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return the contract (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            apply_contract(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) of every operation in ``schema``."""
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def apply_contract(schema: dict[str, Any], settings: Settings) -> None:
    """Add the shared answers, the Settings' bounds and the links to a FastAPI OpenAPI document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in ErrorResponse.model_json_schema(ref_template=_REF + "{model}")["$defs"].items():
        components.setdefault(name, definition)
    components.setdefault("ErrorResponse", ErrorResponse.model_json_schema(ref_template=_REF + "{model}"))
    components["ErrorResponse"].pop("$defs", None)
    for path, method, op in operations(schema):
        _configured_security(op, settings)
        _shared_answers(path, method, op)
        for param in op.get("parameters", []):
            if param.get("name") == "wait" and param.get("in") == "query":
                param["schema"]["maximum"] = settings.wait_max_seconds
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        _bound_body(components[body["$ref"].removeprefix(_REF)] if "$ref" in body else body, settings)
    _link_jobs(schema)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _configured_security(op: dict[str, Any], settings: Settings) -> None:
    """Keep only the security requirements this deployment enforces (no keys set: no 401)."""
    enforced = {"HTTPBearer": bool(settings.api_keys), "MetricsBearer": bool(settings.metrics_token)}
    kept = [req for req in op.get("security", []) if all(enforced.get(name, True) for name in req)]
    if kept:
        op["security"] = kept
    else:
        op.pop("security", None)


def _shared_answers(path: str, method: str, op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    wanted = {"422"} if "parameters" in op else set()
    if "security" in op:
        wanted.add("401")
    if method in _BODY_METHODS:  # any body sent is size- and JSON-checked, taken or not
        wanted |= {"413", "422"}
    if "requestBody" in op:
        wanted.add("429")
    if path not in NO_REDIS:
        wanted.add("503")
    for code in wanted:
        description, headers = _SHARED[code]
        answer = responses.setdefault(code, {"description": description})
        if headers:
            answer.setdefault("headers", {}).update(headers)
    if "requestBody" in op:  # what is left of the per-key limits, when they are on
        for code, answer in responses.items():
            if code.startswith("2"):
                answer.setdefault("headers", {}).update(_LIMIT_HEADERS)
    for code, answer in responses.items():  # every error answer has the one error shape
        if code.startswith(("4", "5")) and "HealthStatus" not in str(answer.get("content")):
            answer["content"] = {"application/json": {"schema": _ERROR_REF}}


def _bound_body(body: dict[str, Any], settings: Settings) -> None:
    props = body.get("properties", {})
    if "max_new_tokens" in props:
        for variant in [props["max_new_tokens"], *props["max_new_tokens"].get("anyOf", [])]:
            if variant.get("type") == "integer":
                variant["maximum"] = settings.max_new_tokens_limit
    if props.get("stop", {}).get("type") == "array":
        props["stop"]["maxItems"] = settings.max_stop_strings
        props["stop"]["items"].update(minLength=1, maxLength=STOP_MAX_CHARS)
    if props.get("metadata", {}).get("type") == "object":
        props["metadata"]["maxProperties"] = METADATA_MAX_KEYS
    if props.get("n", {}).get("type") == "integer":
        props["n"]["maximum"] = settings.max_n
    if props.get("logit_bias", {}).get("type") == "object":  # keys: token ids, as JSON strings
        props["logit_bias"].update(propertyNames={"pattern": r"^[0-9]{1,9}$"}, maxProperties=LOGIT_BIAS_MAX)


def _link_jobs(schema: dict[str, Any]) -> None:
    targets = [
        (op["operationId"], path)
        for path, _method, op in operations(schema)
        if "operationId" in op and "{" + JOB_PARAM + "}" in path
    ]
    for _path, _method, op in operations(schema):
        for code, answer in op.get("responses", {}).items():
            body = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if not code.startswith("2") or body.get("$ref") != _REF + "JobPublic":
                continue
            answer["links"] = {
                target: {"operationId": target, "parameters": {JOB_PARAM: "$response.body#/id"}}
                for target, _ in targets
            }
