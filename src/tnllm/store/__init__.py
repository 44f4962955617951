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
from tnllm.store.aio import AsyncJobStore, async_redis_client
from tnllm.store.ops import (
    CancelOutcome,
    ClaimOutcome,
    CreateOutcome,
    LeaseStatus,
    ListPage,
    ReapOutcome,
    StreamEntry,
    WorkerInfo,
)
from tnllm.store.sync import JobStore, redis_client

__all__ = [
    "AsyncJobStore",
    "CancelOutcome",
    "ChatMessage",
    "ClaimOutcome",
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
    "ReapOutcome",
    "StreamEntry",
    "Usage",
    "WorkerInfo",
    "async_redis_client",
    "redis_client",
]
