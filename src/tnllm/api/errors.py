"""Every error the API answers is JSON ``{"error": {"type", "message", ...}}``.

``ApiError`` is raised by routes and dependencies; the handlers below also turn FastAPI's
validation errors (bad fields, malformed JSON), Starlette's HTTP errors (404 route, 405) and Redis
outages into that shape. Bad input never becomes a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tnllm.protocol.sampling import field_path

log = logging.getLogger(__name__)

#: Seconds a client should wait before retrying after a Redis outage (503).
REDIS_RETRY_AFTER = 5

_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})
_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "queue_full",
    503: "unavailable",
}


class ApiError(Exception):
    """An HTTP error with a machine-readable ``type`` and optional extra fields (e.g. ``field``)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        /,
        *,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status_code
        self.message = message
        self.type = type or _STATUS_TYPES.get(status_code, "error")
        self.headers = dict(headers or {})
        self.extra = extra


def error_body(type: str, message: str, /, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": {"type": type, "message": message, **extra}}


def error_response(
    status_code: int, type: str, message: str, headers: Mapping[str, str] | None = None, /, **extra: Any
) -> JSONResponse:
    """A JSON error response (``extra`` fields join ``type`` and ``message``)."""
    body = error_body(type, message, **extra)
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``; a bare ``("body",)`` → ``body``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    if not parts:
        return str(loc[0]) if loc else "body"
    return field_path(parts)


def _validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    details = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            # position inside the body is not a field: name the body itself
            details.append({"field": "body", "message": f"malformed JSON: {err.get('msg')}"})
            continue
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        details.append({"field": field_name(loc), "message": msg, "in": loc[0] if loc else "body"})
    return details


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc.errors())
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type and any(d["field"] == "body" for d in details):
        # FastAPI reads only JSON-typed bodies (a CSRF guard); say so instead of "not an object"
        details.insert(
            0, {"field": "body", "message": "send a JSON body with Content-Type: application/json"}
        )
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    return error_response(422, "invalid_request", message, field=first["field"], details=details)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    extra = exc.extra
    if exc.status == 422 and "field" in extra and "details" not in extra:  # the validation 422's shape
        detail = exc.message.removeprefix(f"{extra['field']}: ")
        extra = {**extra, "details": [{"field": extra["field"], "message": detail}]}
    return error_response(exc.status, exc.type, exc.message, exc.headers, **extra)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_TYPES.get(exc.status_code, "error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:  # Starlette names only the first matching route's methods
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return error_response(exc.status_code, kind, str(exc.detail), headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document has at this request's path (the routes it documents)."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {m.upper() for m in item if m in _HTTP_METHODS}
    return sorted(methods)


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "unavailable",
        "the job store (Redis) is unreachable; retry later",
        {"Retry-After": str(REDIS_RETRY_AFTER)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RedisConnectionError, _on_redis_down)
    app.add_exception_handler(RedisTimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_unexpected)
