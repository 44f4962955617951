"""The job store: job records, leases, token streams and worker heartbeats in Redis.

Torch-free; imported by the API (``AsyncJobStore``) and the workers (``JobStore``). Every state
transition is an atomic Lua script; see docs/INTERNALS.md ("Job store") for the contract.
"""

from tnllm.protocol.jobs import (
    ChatMessage,
    GenerationParams,
    JobError,
    JobPublic,
    JobRecord,
    JobResult,
    JobStatus,
    Usage,
)
from tnllm.store.aio import AsyncJobStore
from tnllm.store.clients import async_redis_client, redis_client
from tnllm.store.entries import StreamEntry
from tnllm.store.listing import ListPage
from tnllm.store.ops import (
    CancelKind,
    CancelOutcome,
    ClaimOutcome,
    CreateKind,
    CreateOutcome,
    LeaseStatus,
    ReapAction,
    ReapOutcome,
    WorkerInfo,
)
from tnllm.store.sync import JobStore

__all__ = [
    "AsyncJobStore",
    "CancelKind",
    "CancelOutcome",
    "ChatMessage",
    "ClaimOutcome",
    "CreateKind",
    "CreateOutcome",
    "GenerationParams",
    "JobError",
    "JobPublic",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "JobStore",
    "LeaseStatus",
    "ListPage",
    "ReapAction",
    "ReapOutcome",
    "StreamEntry",
    "Usage",
    "WorkerInfo",
    "async_redis_client",
    "redis_client",
]
