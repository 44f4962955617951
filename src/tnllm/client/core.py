"""What ``Client`` and ``AsyncClient`` share, free of I/O: the calls (method, path, body, whether a
retry is safe), the retry policy, the reading of answers (job objects, pages, errors), the stream's
typed events and resume cursor, and the plan of ``wait``. The two clients only send and sleep.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from tnllm.client.errors import (
    ApiConnectionError,
    ApiStatusError,
    InvalidRequest,
    NotFound,
    StreamInterrupted,
    error_class,
)
from tnllm.protocol.http import JobCreate, JobList
from tnllm.protocol.jobs import JobPublic, JobStatus
from tnllm.protocol.sampling import error_message, field_path

#: Where a client talks to when given no URL (``tnllm up``'s API on this machine).
DEFAULT_URL = "http://127.0.0.1:8000"
#: Answers worth another try: the gateway or the server is briefly unable (502, 503, 504).
RETRY_STATUSES = frozenset({502, 503, 504})
#: Longest pause a ``Retry-After`` may impose on one retry.
MAX_RETRY_AFTER = 30.0
#: Read timeout of a stream: the server sends a keep-alive comment every 15 s.
STREAM_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is tried again (exponential backoff, jitter)."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``attempt + 1``; a server's ``Retry-After`` is honoured."""
        base = min(self.max_backoff, self.backoff * 2**attempt)
        jittered = base * (0.5 + random.random() / 2)
        if retry_after is not None:
            return min(max(retry_after, jittered), MAX_RETRY_AFTER)
        return jittered


@dataclass(frozen=True)
class Call:
    """One API call. ``safe``: sending it twice does no harm, so it may be retried after the request
    went out (GET, cancel, a submit with an idempotency key); an unsafe call is retried only when
    the connection never opened."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    safe: bool = True
    timeout: float | None = None


def job_path(job_id: str, suffix: str = "") -> str:
    """``/v1/jobs/{id}{suffix}`` with the id escaped (an id is never a path)."""
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def job_body(prompt: str | None, body: JobCreate | None, fields: dict[str, Any]) -> JobCreate:
    """The job body: ``body`` as given, or ``JobCreate`` built from ``prompt`` and ``fields``
    (``InvalidRequest`` worded as the API words a 422, before anything is sent)."""
    if body is not None:
        if prompt is not None or fields:
            raise TypeError("give either a JobCreate body or its fields, not both")
        return body
    if prompt is not None:
        fields = {"prompt": prompt, **fields}
    try:
        return JobCreate(**fields)
    except ValidationError as exc:
        errors = exc.errors()
        detail = {"field": field_path(errors[0]["loc"] if errors else ()), "in": "body"}
        raise InvalidRequest(422, "invalid_request", error_message(exc), detail) from None


def submit_call(body: JobCreate, idempotency_key: str | None, auto_key: bool) -> Call:
    """``POST /v1/jobs``; a generated idempotency key (``auto_key``) makes a retried submit one job."""
    key = idempotency_key or (uuid.uuid4().hex if auto_key else None)
    headers = {"Idempotency-Key": key} if key else {}
    payload = body.model_dump(mode="json", exclude_unset=True)
    return Call("POST", "/v1/jobs", json=payload, headers=headers, safe=key is not None)


def get_call(job_id: str, wait: float = 0.0, timeout: float = 30.0) -> Call:
    """``GET /v1/jobs/{id}``, held by the server up to ``wait`` seconds until the job ends."""
    params = {"wait": f"{wait:g}"} if wait > 0 else None
    return Call("GET", job_path(job_id), params=params, timeout=wait + timeout)


def list_call(status: str | None, page_size: int, cursor: str | None) -> Call:
    """``GET /v1/jobs``: one page."""
    params: dict[str, Any] = {"limit": page_size}
    if status is not None:
        params["status"] = JobStatus(status).value
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", params=params)


def api_error(response: httpx.Response) -> ApiStatusError:
    """The exception of an error answer (``{"error": {"type", "message", ...}}``, or a proxy's page)."""
    try:
        detail = response.json()["error"]
        kind, message = str(detail["type"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        detail, kind = {}, "http_error"
        message = f"HTTP {response.status_code} from {response.request.url}"
    exc = error_class(response.status_code, kind)(response.status_code, kind, message, detail)
    exc.retry_after = retry_after(response)
    return exc


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the delta form the API sends), if any."""
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def connection_error(base_url: httpx.URL, exc: Exception) -> ApiConnectionError:
    """One line naming the server and the transport's reason."""
    reason = str(exc) or type(exc).__name__
    return ApiConnectionError(f"cannot reach the tnllm server at {base_url}: {reason}")


class Attempts:
    """The retry decisions of one call: after a transport error or an answer, either the seconds to
    wait before the next attempt, or the final exception raised."""

    def __init__(self, policy: RetryPolicy, call: Call, base_url: httpx.URL) -> None:
        self.policy, self.call, self.base_url = policy, call, base_url
        self.attempt = 0

    def after_error(self, exc: httpx.TransportError) -> float:
        """A transport error: retry while attempts last and the call may be repeated."""
        not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if self.attempt >= self.policy.retries or not (not_sent or self.call.safe):
            raise connection_error(self.base_url, exc) from exc
        return self._next(None)

    def after_response(self, response: httpx.Response) -> float | None:
        """``None`` for a success; a delay for a retryable answer; else the answer's exception."""
        if response.is_success:
            return None
        error = api_error(response)
        if (
            self.attempt >= self.policy.retries
            or response.status_code not in RETRY_STATUSES
            or not self.call.safe
        ):
            raise error
        return self._next(error.retry_after)

    def _next(self, after: float | None) -> float:
        delay = self.policy.delay(self.attempt, after)
        self.attempt += 1
        return delay


def read_job(response: httpx.Response) -> JobPublic:
    """The job object of a success answer."""
    return JobPublic.model_validate_json(response.content)


def read_page(response: httpx.Response) -> JobList:
    """A page of ``GET /v1/jobs``."""
    return JobList.model_validate_json(response.content)


# --- the event stream ----------------------------------------------------------------------------


class TokenEvent(BaseModel):
    """New text of the job (``text``: the delta); extra fields of newer servers are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: Literal["token"] = "token"
    id: str | None = None
    text: str


class ResetEvent(BaseModel):
    """The job went back to the queue (its worker was lost): drop the text received so far."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: Literal["reset"] = "reset"
    id: str | None = None
    reason: str = ""


class DoneEvent(BaseModel):
    """The job ended; ``job`` is its final object."""

    model_config = ConfigDict(frozen=True)

    event: Literal["done"] = "done"
    id: str | None = None
    job: JobPublic


StreamEvent = TokenEvent | ResetEvent | DoneEvent


class StreamCursor:
    """Where a job's stream is: the last event id seen (sent back as ``Last-Event-ID`` on resume),
    whether it ended, and how many reconnects in a row brought nothing."""

    def __init__(self, job_id: str, policy: RetryPolicy, last_event_id: str | None = None) -> None:
        self.job_id, self.policy = job_id, policy
        self.last_event_id = last_event_id
        self.done = False
        self.failures = 0

    def call(self) -> Call:
        """The (re)connecting request."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        return Call("GET", job_path(self.job_id, "/stream"), headers=headers)

    def feed(self, event: str, data: str, event_id: str | None) -> StreamEvent | None:
        """The typed event of one SSE message (None for kinds this client does not know)."""
        if event_id:
            self.last_event_id = event_id
        self.failures = 0
        payload = json.loads(data) if data else {}
        if event == "token":
            return TokenEvent(id=event_id, **payload)
        if event == "reset":
            return ResetEvent(id=event_id, **payload)
        if event == "done":
            self.done = True
            if payload.get("status") == "expired":
                raise NotFound(404, "not_found", f"job {self.job_id!r} expired", {"field": "id"})
            return DoneEvent(id=event_id, job=JobPublic.model_validate(payload))
        return None

    def broken(self, problem: Exception | None) -> float:
        """The connection ended before ``done``: the pause before resuming, or StreamInterrupted."""
        if isinstance(problem, ApiStatusError) and problem.status not in RETRY_STATUSES:
            raise problem
        if self.failures >= self.policy.retries:
            reason = f": {problem}" if problem else ""
            raise StreamInterrupted(f"the stream of job {self.job_id!r} broke and did not resume{reason}")
        delay = self.policy.delay(self.failures)
        self.failures += 1
        return delay


def stream_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """The client's timeouts with a read timeout that outlasts the server's keep-alive pings."""
    return httpx.Timeout(timeout.connect, read=STREAM_READ_TIMEOUT, write=timeout.write, pool=timeout.pool)


# --- wait -----------------------------------------------------------------------------------------


class WaitPlan:
    """How ``wait`` asks: the server's long poll (``?wait=``) in rounds of ``long_poll`` seconds, or
    polling with backoff where the server does not hold the request (an older API, or a smaller
    ``wait`` limit than asked)."""

    def __init__(self, timeout: float | None, long_poll: float) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.long_poll = long_poll
        self.server_wait = long_poll > 0
        self.polls = 0

    def wait_s(self) -> float:
        """The ``wait`` of the next GET."""
        if not self.server_wait:
            return 0.0
        return max(0.0, min(self.long_poll, self.remaining()))

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def refused(self, exc: InvalidRequest) -> bool:
        """The server refused our ``wait`` (over its limit): poll instead. False for other errors."""
        if exc.field == "wait" and self.server_wait:
            self.server_wait = False
            return True
        return False

    def pause(self, asked: float, took: float) -> float:
        """Seconds to sleep after a non-terminal answer (0 while the server holds the request)."""
        if self.server_wait and took >= asked / 2:
            return 0.0
        self.polls += 1
        return max(0.0, min(0.2 * 1.5**self.polls, 2.0, self.remaining()))
