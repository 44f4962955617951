"""OpenAI's error shape for the OpenAI-compatible routes: ``{"error": {"message", "type", "param",
"code"}}``.

``OpenAIRoute`` is the route class of those routers: it turns every ``ApiError``, validation error,
HTTP error and Redis outage raised while handling one of their requests (dependencies such as the
API-key check included) into that shape, while the native ``/v1/jobs`` keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tnllm.api.errors import REDIS_RETRY_AFTER, ApiError, field_name

#: The native error types that say no more than the status does (no ``code`` for them).
_GENERIC_TYPES = {
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "payload_too_large",
    "invalid_request",
    "error",
}
#: Native error types → OpenAI's ``code``.
_CODES = {"prompt_too_long": "context_length_exceeded", "queue_full": "rate_limit_exceeded"}


def openai_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_payload(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error in OpenAI's shape (422s become 400s, as OpenAI answers them)."""
    status = 400 if status == 422 else status
    return status, {"error": {"message": message, "type": openai_type(status), "param": param, "code": code}}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error answer in OpenAI's shape."""
    status, body = error_payload(status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


#: The paths whose errors come in OpenAI's shape (routers with ``OpenAIRoute``).
OPENAI_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/files", "/v1/batches")


def malformed_refusal(path: str, message: str) -> tuple[int, dict[str, Any]] | None:
    """The answer to a body that is not strict JSON on an OpenAI path (``StrictJsonMiddleware``'s
    hook); None elsewhere (the native 422)."""
    if not path.startswith(OPENAI_PATHS):
        return None
    return error_payload(400, f"malformed JSON body: {message}", "body")


def oversize_refusal(path: str, message: str) -> tuple[int, dict[str, Any]] | None:
    """The 413 of a body over the size limit on an OpenAI path (``BodyLimitMiddleware``'s hook)."""
    return error_payload(413, message, "body") if path.startswith(OPENAI_PATHS) else None


def invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    """A 400 naming ``param`` (raise it from the OpenAI routes)."""
    return ApiError(400, message, field=param, code=code)


def api_error_payload(exc: ApiError) -> tuple[int, dict[str, Any]]:
    """(status, body) of an ``ApiError`` (raised by the shared submit path, the key check...)."""
    code = exc.extra.get("code")
    if code is None and exc.type not in _GENERIC_TYPES:
        code = _CODES.get(exc.type, exc.type)
    if exc.status == 401:
        code = "invalid_api_key"
    return error_payload(exc.status, exc.message, exc.extra.get("field"), code)


def from_api_error(exc: ApiError) -> JSONResponse:
    """An ``ApiError`` as an answer in OpenAI's shape."""
    status, body = api_error_payload(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers)


def from_validation(exc: RequestValidationError) -> JSONResponse:
    """A request that failed validation: 400 naming the first bad parameter."""
    errors = exc.errors()
    if not errors:
        return openai_error(400, "invalid request")
    err = errors[0]
    if err.get("type") == "json_invalid":
        return openai_error(400, f"malformed JSON body: {err.get('msg')}", param="body")
    param = field_name(tuple(err.get("loc", ())))
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return openai_error(400, f"{param}: {message}", param=param)


class OpenAIRoute(APIRoute):
    """A route whose errors come in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return from_validation(exc)
            except ApiError as exc:
                return from_api_error(exc)
            except StarletteHTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
            except (RedisConnectionError, RedisTimeoutError):
                return openai_error(
                    503,
                    "the job store (Redis) is unreachable; retry later",
                    headers={"Retry-After": str(REDIS_RETRY_AFTER)},
                )

        return route
