"""The Python client of tnllm's job API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

```python
from tnllm.client import Client

with Client("http://127.0.0.1:8000", api_key=None) as client:
    job = client.submit("What is linear attention?", max_new_tokens=64)
    for event in client.stream(job.id):        # TokenEvent, ResetEvent, then DoneEvent
        print(getattr(event, "text", ""), end="", flush=True)
    print(client.get(job.id).result)
```
Bodies and answers are the protocol's models (``JobCreate``, ``JobPublic``); errors are the classes
of ``tnllm.client.errors``, one per error type of the API. Imports only httpx, httpx-sse and the
torch-free ``tnllm.protocol``.
"""

from tnllm.client.aio import AsyncClient
from tnllm.client.core import DEFAULT_URL, DoneEvent, ResetEvent, RetryPolicy, StreamEvent, TokenEvent
from tnllm.client.errors import (
    ApiConnectionError,
    ApiStatusError,
    AuthenticationError,
    ClientError,
    Conflict,
    GatewayTimeout,
    IdempotencyConflict,
    InvalidRequest,
    JobNotPaused,
    JobTerminal,
    NotContinuable,
    NotFound,
    NoWebhookEvent,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamInterrupted,
    Unavailable,
    WaitTimeout,
)
from tnllm.client.sync import Client
from tnllm.protocol.http import JobCreate
from tnllm.protocol.jobs import JobPublic, JobStatus

__all__ = [
    "DEFAULT_URL",
    "ApiConnectionError",
    "ApiStatusError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientError",
    "Conflict",
    "DoneEvent",
    "GatewayTimeout",
    "IdempotencyConflict",
    "InvalidRequest",
    "JobCreate",
    "JobNotPaused",
    "JobPublic",
    "JobStatus",
    "JobTerminal",
    "NoWebhookEvent",
    "NotContinuable",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "ResetEvent",
    "RetryPolicy",
    "ServerError",
    "StreamEvent",
    "StreamInterrupted",
    "TokenEvent",
    "Unavailable",
    "WaitTimeout",
]
