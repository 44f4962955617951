"""Cluster-wide job counters kept in one Redis hash, so any API process can expose them.

Jobs finish in many processes on many hosts (GPU workers, the reaper, the API when it cancels a
queued job, the webhook worker); a per-process Prometheus registry would scatter the numbers, and
summing them needs every process scraped. Instead each of those places adds its observation to the
hash ``tnllm:metrics:jobs`` in the same round trip as its own write, and the API's ``/metrics``
turns the hash into counters and histograms (``tnllm/api/metrics.py``).

The ``add_*`` functions only queue commands on a Redis pipeline, sync (``redis.Redis.pipeline()``)
or asyncio (``redis.asyncio``): the caller executes it, in a MULTI with its own write if it likes.
Everything here is torch-free; the ``add_*`` functions work with any redis-py pipeline (or a
``flow.Batch``).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KEY = "tnllm:metrics:jobs"
#: Counters survive this long without a write (a reset looks like a restart to Prometheus).
KEY_TTL = 90 * 24 * 3600

TERMINAL_STATES = ("succeeded", "failed", "cancelled")
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")
#: Seconds from a job's start to its end: a few tokens on a small model to a long 7B answer.
DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Seconds a job waited in the queue before a worker took it.
QUEUE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def _bucket_field(prefix: str, buckets: Sequence[float], value: float) -> str:
    # Non-cumulative storage: one HINCRBY per observation; the reader accumulates.
    i = bisect.bisect_left(buckets, value)
    return f"{prefix}:le:{buckets[i]:g}" if i < len(buckets) else f"{prefix}:le:+Inf"


def _observe(pipe: Any, prefix: str, buckets: Sequence[float], value: float) -> None:
    value = max(0.0, float(value))
    pipe.hincrby(KEY, _bucket_field(prefix, buckets, value), 1)
    pipe.hincrbyfloat(KEY, f"{prefix}:sum", value)
    pipe.hincrby(KEY, f"{prefix}:count", 1)


def add_job_started(pipe: Any, queued_seconds: float) -> None:
    """Queue the observation of a job that left the queue after ``queued_seconds``."""
    _observe(pipe, "queued", QUEUE_BUCKETS, queued_seconds)
    pipe.expire(KEY, KEY_TTL)


def add_job_finished(
    pipe: Any,
    status: str,
    run_seconds: float | None = None,
    *,
    reason: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    """Queue the observation of a job that reached terminal ``status``.

    ``run_seconds`` (start to end) is observed only for jobs that ran; ``reason`` is the error code
    of a failed job (``worker_lost``, ``timeout``...), kept as a label of the failure counter.
    """
    if status not in TERMINAL_STATES:
        raise ValueError(f"not a terminal job state: {status!r}")
    pipe.hincrby(KEY, f"finished:{status}", 1)
    if status == "failed":
        pipe.hincrby(KEY, f"failed_reason:{reason or 'error'}", 1)
    if run_seconds is not None:
        _observe(pipe, "duration", DURATION_BUCKETS, run_seconds)
    if prompt_tokens:
        pipe.hincrby(KEY, "tokens:prompt", int(prompt_tokens))
    if completion_tokens:
        pipe.hincrby(KEY, "tokens:completion", int(completion_tokens))
    pipe.expire(KEY, KEY_TTL)


def add_webhook_delivery(pipe: Any, outcome: str) -> None:
    """Queue one webhook delivery attempt's outcome (``delivered``, ``retrying`` or ``failed``)."""
    if outcome not in WEBHOOK_OUTCOMES:
        raise ValueError(f"not a webhook outcome: {outcome!r}")
    pipe.hincrby(KEY, f"webhook:{outcome}", 1)
    pipe.expire(KEY, KEY_TTL)


@dataclass
class Histogram:
    """A histogram read back from the hash: cumulative ``(le, count)`` pairs ending at +Inf."""

    buckets: list[tuple[float, int]]
    sum: float
    count: int


@dataclass
class JobStats:
    """Everything in the hash, decoded."""

    finished: dict[str, int] = field(default_factory=dict)
    failed_reasons: dict[str, int] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    duration: Histogram | None = None
    queued: Histogram | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _histogram(raw: Mapping[str, str], prefix: str, buckets: Sequence[float]) -> Histogram:
    running = 0
    cumulative: list[tuple[float, int]] = []
    for le in [*buckets, math.inf]:
        running += int(raw.get(f"{prefix}:le:{le:g}" if le != math.inf else f"{prefix}:le:+Inf", 0))
        cumulative.append((le, running))
    return Histogram(cumulative, float(raw.get(f"{prefix}:sum", 0.0)), int(raw.get(f"{prefix}:count", 0)))


def parse(raw_hash: Mapping[Any, Any]) -> JobStats:
    """Decode an ``HGETALL`` of ``KEY`` (bytes or str keys) into ``JobStats``."""
    raw = {_text(k): _text(v) for k, v in raw_hash.items()}
    stats = JobStats(
        finished={s: int(raw.get(f"finished:{s}", 0)) for s in TERMINAL_STATES},
        webhooks={o: int(raw.get(f"webhook:{o}", 0)) for o in WEBHOOK_OUTCOMES},
        tokens={k: int(raw.get(f"tokens:{k}", 0)) for k in ("prompt", "completion")},
        duration=_histogram(raw, "duration", DURATION_BUCKETS),
        queued=_histogram(raw, "queued", QUEUE_BUCKETS),
    )
    for name, value in raw.items():
        if name.startswith("failed_reason:"):
            stats.failed_reasons[name.partition(":")[2]] = int(value)
    return stats


# --- recording from the job store (``flow.record_started`` / ``flow.record_finished``) ---------
# The job record's fields (``tnllm/store/codec.py``): ``created_at``/``started_at`` are epoch
# seconds, ``result`` is JSON with ``usage``. Metrics are best effort: a failure to record is logged
# and never fails the job transition that already happened.


def usage(result_json: str | None) -> tuple[int, int]:
    """(prompt, completion) tokens of a stored ``result`` (0, 0 when absent or unreadable)."""
    try:
        used = (json.loads(result_json) if result_json else {}).get("usage") or {}
        return int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0, 0


def since(start: str | None, now: float) -> float | None:
    """Seconds from a stored epoch ``start`` to ``now`` (None when there is none)."""
    try:
        return max(0.0, now - float(start)) if start else None
    except ValueError:
        return None


def log_failure(what: str, exc: BaseException) -> None:
    """Log a metrics write that failed (the transition it observes stands)."""
    log.warning("could not record job %s metrics", what, exc_info=exc)
