"""The client's exceptions: one class per error ``type`` the API answers, under ``tnllm.errors``.

```
TnllmError
└── ClientError                              everything tnllm.client raises on purpose
    ├── ApiConnectionError (ConnectionError) the server could not be reached (after the retries)
    ├── StreamInterrupted                    a stream could not be resumed (after the retries)
    ├── WaitTimeout (TimeoutError)           wait() gave up before the job ended (``.job``)
    └── ApiStatusError                       an error answer: ``.status``, ``.type``, ``.field``, ``.body``
        ├── AuthenticationError              401 unauthorized (missing or wrong API key)
        ├── PermissionDenied                 403 forbidden
        ├── NotFound (LookupError)           404 not_found (unknown, expired or someone else's job)
        ├── InvalidRequest (RequestError)    400/405/415/422 invalid_request, bad_request, ...
        │   ├── IdempotencyConflict          422 idempotency_conflict (same key, other body)
        │   └── PayloadTooLarge              413 payload_too_large, prompt_too_long
        ├── Conflict                         409 conflict
        │   ├── JobTerminal                  409 job_terminal (``.job_status``: how it ended)
        │   ├── NotContinuable               409 not_continuable (``continue_from`` a job that cannot be)
        │   ├── JobNotPaused                 409 job_not_paused (resume of a job that is not paused)
        │   └── NoWebhookEvent               409 no_webhook_event
        ├── RateLimited                      429 rate_limited (``.retry_after``)
        │   ├── QuotaExceeded                429 quota_exceeded (the key's tokens of the day)
        │   └── QueueFull                    429 queue_full
        ├── Unavailable                      503 unavailable (Redis down; ``.retry_after``)
        ├── ServerError                      500 internal_error and other 5xx
        └── GatewayTimeout                   504 timeout (``POST /`` waited too long; the job goes on)
```
"""

from __future__ import annotations

from typing import Any

from tnllm.errors import RequestError, TnllmError


class ClientError(TnllmError):
    """Base of every error the client raises on purpose."""


class ApiConnectionError(ClientError, ConnectionError):
    """The server could not be reached, or the connection broke, on every attempt."""


class StreamInterrupted(ClientError):
    """A job's event stream broke and could not be resumed within the retries."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait`` gave up before the job ended; ``job`` is the last state seen."""

    def __init__(self, message: str, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


class ApiStatusError(ClientError):
    """An error answer of the API (``{"error": {"type", "message", ...}}``)."""

    def __init__(self, status: int, type: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        #: The whole ``error`` object (``field``, ``details``, ``status``, ... where the API gives them).
        self.body: dict[str, Any] = dict(body or {})
        #: The request field the API blames (``max_new_tokens``, ``Idempotency-Key``...), if any.
        self.field: str | None = self.body.get("field")
        #: Seconds the API asked to wait before retrying (``Retry-After``), if it said.
        self.retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


class AuthenticationError(ApiStatusError):
    """401: no API key, or a wrong one."""


class PermissionDenied(ApiStatusError):
    """403: the key may not do this."""


class NotFound(ApiStatusError, LookupError):
    """404: unknown, expired or someone else's job (or an unknown route)."""


class InvalidRequest(ApiStatusError, RequestError):
    """The server refused the request's content; ``field`` names the culprit."""


class IdempotencyConflict(InvalidRequest):
    """The idempotency key was already used with a different body."""


class PayloadTooLarge(InvalidRequest):
    """413: the body or the prompt is over the server's limits."""


class Conflict(ApiStatusError):
    """409: the job's state does not allow this."""


class JobTerminal(Conflict):
    """409: the job already ended; ``job_status`` says how."""

    @property
    def job_status(self) -> str | None:
        """``succeeded``, ``failed`` or ``cancelled``."""
        value = self.body.get("status")
        return str(value) if value is not None else None


class NotContinuable(Conflict):
    """409: ``continue_from`` names a job that did not succeed or kept no conversation."""


class JobNotPaused(Conflict):
    """409: ``resume`` of a job that is not paused (``body["status"]`` says what it is)."""


class NoWebhookEvent(Conflict):
    """409: the job has no webhook, or no event happened yet."""


class RateLimited(ApiStatusError):
    """429: too many requests now; retry after ``retry_after`` seconds."""


class QuotaExceeded(RateLimited):
    """429: the key used its completion tokens of the day (UTC)."""


class QueueFull(RateLimited):
    """429: the queue holds its maximum of jobs."""


class Unavailable(ApiStatusError):
    """503: the server cannot serve now (its Redis is unreachable)."""


class ServerError(ApiStatusError):
    """500 or another 5xx: the server failed."""


class GatewayTimeout(ApiStatusError):
    """504: the server stopped waiting for the job (which goes on in the background)."""


#: The API's error ``type`` → the class raised for it (tnllm/api/errors.py and the routes).
ERROR_TYPES: dict[str, type[ApiStatusError]] = {
    "bad_request": InvalidRequest,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDenied,
    "not_found": NotFound,
    "method_not_allowed": InvalidRequest,
    "conflict": Conflict,
    "job_terminal": JobTerminal,
    "no_webhook_event": NoWebhookEvent,
    "not_continuable": NotContinuable,
    "job_not_paused": JobNotPaused,
    "payload_too_large": PayloadTooLarge,
    "prompt_too_long": PayloadTooLarge,
    "unsupported_media_type": InvalidRequest,
    "invalid_request": InvalidRequest,
    "idempotency_conflict": IdempotencyConflict,
    "queue_full": QueueFull,
    "rate_limited": RateLimited,
    "quota_exceeded": QuotaExceeded,
    "unavailable": Unavailable,
    "internal_error": ServerError,
    "timeout": GatewayTimeout,
}

#: Fallback by status for a ``type`` this client does not know (a newer server).
_BY_STATUS: dict[int, type[ApiStatusError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
    504: GatewayTimeout,
}


def error_class(status: int, type: str) -> type[ApiStatusError]:
    """The exception class for an error answer of ``status`` with ``type``."""
    if type in ERROR_TYPES:
        return ERROR_TYPES[type]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else InvalidRequest if status >= 400 else ApiStatusError
