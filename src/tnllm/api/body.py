"""Strict JSON for every request body, checked before any route parses it.

``StrictJsonMiddleware`` (pure ASGI, inside the body-size limit) answers a body that is not strict
JSON with the API's one malformed-body answer, 422 ``{"error": {"type": "invalid_request",
"field": "body", ...}}``, whatever the route:

- nesting deeper than ``TNLLM_MAX_BODY_DEPTH`` is refused from a scan of the raw bytes, before a
  recursive parser could run out of stack (a 2,000-deep body used to be a 500 and a reset
  connection);
- ``NaN``, ``Infinity`` and numbers beyond a float's range (``1e400`` would parse as infinity) are
  refused: JSON has no such values;
- malformed JSON and text that is not UTF-8 are refused, naming the position.

The body is replayed unchanged to the app, so a route's own parser (FastAPI's ``json.loads``) sees
only text that this module's ``parse_json`` accepted and reads the same values from it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tnllm.api.errors import error_body

#: Methods whose body is checked (the others carry none in this API).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Form uploads are not JSON; no route takes them, and FastAPI refuses them on its own.
_FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")
# A JSON string (escapes included), or an unterminated one up to the end: brackets inside do not
# nest. Possessive, so each match succeeds in one pass (no quadratic retries on hostile text).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = frozenset(b"[{")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class BodyError(ValueError):
    """A request body that is not strict JSON (the message says why, without the ``body:``)."""


def nesting_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``limit``, from the bytes alone (no
    recursion, so any depth is safe; strings are skipped, so brackets inside them do not count)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot nest deeper than the brackets it has
    brackets = _STRING.sub(b'""', raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        depth = depth + 1 if byte in _BRACKETS else depth - 1
        if depth > limit:
            return True
    return False


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"number out of range: {text[:40]}")
    return value


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The value of a strict JSON body; ``BodyError`` naming the problem otherwise."""
    if nesting_depth_exceeds(raw, max_depth):
        raise BodyError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except BodyError:
        raise
    except json.JSONDecodeError as exc:
        raise BodyError(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BodyError("not UTF-8 text") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise BodyError(f"malformed JSON: {exc}") from None


def malformed_body(message: str) -> dict[str, Any]:
    """The JSON of the malformed-body answer (422): the same shape as a field's 422."""
    text = f"body: {message}"
    return error_body(
        "invalid_request", text, field="body", details=[{"field": "body", "message": message, "in": "body"}]
    )


class StrictJsonMiddleware:
    """Refuse request bodies that are not strict JSON (see the module docstring) with a 422."""

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or _is_form(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip():
            try:
                parse_json(raw, self.max_depth)
            except BodyError as exc:
                await _answer(send, 422, malformed_body(str(exc)))
                return
        await self.app(scope, replay(raw, receive), send)


def _is_form(scope: Scope) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").lower()
    return content_type.startswith(_FORM_TYPES)


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` in one message, then waits as the real one does."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replayed
