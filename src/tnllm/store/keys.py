"""Redis key names of the job store (prefix ``tnllm:``). Every key written gets a TTL.

| key | type | holds |
| --- | --- | --- |
| ``tnllm:job:{id}`` | hash | the job record (see ``codec.py`` for the fields) |
| ``tnllm:stream:{id}`` | stream | entries ``t=token text=..``, ``t=reset attempt=..``, ``t=done status=..`` |
| ``tnllm:lease:{id}`` | string | id of the worker running the job; TTL ``Settings.lease_ttl`` |
| ``tnllm:jobs:{owner}`` | zset | job ids scored by creation time (µs), for listing |
| ``tnllm:idem:{owner}:{key}`` | string | ``{job_id}|{body_hash}``; TTL 24 h (at most the result TTL) |
| ``tnllm:queue`` | zset | queued job ids, scored so that a lower score runs first |
| ``tnllm:running`` | zset | running job ids by start time (the reaper scans it) |
| ``tnllm:workers`` | zset | worker ids scored by heartbeat expiry (epoch s) |
| ``tnllm:workers:{id}`` | hash | one worker's heartbeat; TTL given by the worker |
| ``tnllm:rate:{owner}`` | zset | the owner's admitted submissions of the last minute, scored by time |
| ``tnllm:usage:{owner}:{day}`` | string | completion tokens of the owner's jobs finished that UTC day |
| ``tnllm:events:finished`` | pub/sub channel | ``{job_id}`` published when a job becomes terminal |
| ``tnllm:events:cancel`` | pub/sub channel | ``{job_id}`` published when a running job must stop |
| ``tnllm:reaper:clock`` | string | server time (ms) of the last reaper round of any worker |
| ``tnllm:reaper:grace`` | string | exists while reaping waits after an outage; TTL the grace |
"""

from __future__ import annotations

PREFIX = "tnllm:"

QUEUE = PREFIX + "queue"
RUNNING = PREFIX + "running"
WORKERS = PREFIX + "workers"
FINISHED_CHANNEL = PREFIX + "events:finished"
CANCEL_CHANNEL = PREFIX + "events:cancel"
REAPER_CLOCK = PREFIX + "reaper:clock"
REAPER_GRACE = PREFIX + "reaper:grace"

#: Seconds an Idempotency-Key is remembered.
IDEMPOTENCY_TTL = 24 * 3600

#: Queue score = (MAX_PRIORITY - priority) * PRIORITY_BAND + created_ms, so higher priority first,
#: then first-come-first-served. Epoch milliseconds stay far below one band until the year 2286.
PRIORITY_BAND = 10**13


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return f"{PREFIX}job:{job_id}"


def stream(job_id: str) -> str:
    """Stream of token deltas and the final ``done`` entry."""
    return f"{PREFIX}stream:{job_id}"


def lease(job_id: str) -> str:
    """Lease of a running job; exists while its worker is alive."""
    return f"{PREFIX}lease:{job_id}"


def owner_jobs(owner: str) -> str:
    """Sorted set of one owner's job ids."""
    return f"{PREFIX}jobs:{owner}"


def idempotency(owner: str, key: str) -> str:
    """Idempotency record of one owner's key."""
    return f"{PREFIX}idem:{owner}:{key}"


def rate(owner: str) -> str:
    """One owner's recent submissions (the per-key rate limit)."""
    return f"{PREFIX}rate:{owner}"


def usage(owner: str, day: int) -> str:
    """Completion tokens of one owner's jobs that finished on UTC day ``day`` (days since 1970)."""
    return f"{PREFIX}usage:{owner}:{day}"


def worker(worker_id: str) -> str:
    """Heartbeat hash of one worker."""
    return f"{PREFIX}workers:{worker_id}"


def queue_score(priority: int, created_ms: int, max_priority: int = 9) -> int:
    """Score of a queued job in ``tnllm:queue`` (lower runs first)."""
    return (max_priority - priority) * PRIORITY_BAND + created_ms
