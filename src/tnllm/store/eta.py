"""Estimated start and finish times of jobs, from the workers' measured step times and the work
ahead (torch-free; one ``Flow`` for both stores).

This model's cost per token is constant (a fixed-size state: every decode step of a running job
costs the same whatever its length), so a job needs ``max_new_tokens - streamed`` more steps of
its worker's engine, and every slot decodes one token per step. The estimate is a list schedule:
every slot of the live workers is free when its running job's remaining tokens are done (now, for
an idle slot); each queued job, in queue order, takes the slot that frees first. A job's own place
in that schedule is its ``estimated_start_at``, plus its own tokens its ``estimated_finish_at``.
``max_new_tokens`` bounds a job (EOS may end it sooner), so estimates err late, never early.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass

from tnllm.store import keys
from tnllm.store.flow import Batch, Call, Flow, workers
from tnllm.store.ops import WorkerInfo

#: At most this many queued jobs ahead are read one by one; further ones count as their average.
SCAN_LIMIT = 500
#: A step time assumed before any worker has measured one (seconds).
DEFAULT_STEP_S = 0.05


@dataclass(frozen=True)
class Eta:
    """Seconds from now until a job starts / finishes (None: not known, e.g. no live worker)."""

    queue_position: int | None
    start_s: float | None
    finish_s: float | None


def _tokens(params_json: str | None) -> int:
    try:
        return int(json.loads(params_json or "{}").get("max_new_tokens") or 1)
    except (ValueError, TypeError, AttributeError):
        return 1


def schedule(free_at: Sequence[float], ahead: Sequence[float], own: float) -> tuple[float, float]:
    """(start, finish) of a job of ``own`` seconds behind the ``ahead`` jobs on slots free at ``free_at``."""
    heap = list(free_at) or [0.0]
    heapq.heapify(heap)
    for work in ahead:
        heapq.heappush(heap, heapq.heappop(heap) + work)
    start = heap[0]
    return start, start + own


def _step_s(infos: Sequence[WorkerInfo]) -> float:
    measured = [w.step_time_s for w in infos if w.step_time_s > 0]
    return sum(measured) / len(measured) if measured else DEFAULT_STEP_S


def estimate(job_id: str) -> Flow:
    """The ``Eta`` of a queued or running job (``queue_position`` only while queued); None when
    the job is neither or no worker is live."""
    infos = [w for w in (yield from workers()) if w.model_loaded]
    status, params, done, owner = yield Call(
        "hmget", (keys.job(job_id), ["status", "params", "tokens", "lease_owner"])
    )
    if not infos or status not in ("queued", "running"):
        return None
    step = {w.id: w.step_time_s or _step_s(infos) for w in infos}
    own = max(_tokens(params) - int(done or 0), 0)
    if status == "running":
        return Eta(None, 0.0, own * step.get(owner or "", _step_s(infos)))
    rank = yield Call("zrank", (keys.QUEUE, job_id))
    if rank is None:
        return None
    free_at, waiting = yield from _slots_free_at(infos, step)
    ahead_ids = (yield Call("zrange", (keys.QUEUE, 0, min(rank, SCAN_LIMIT) - 1))) if rank else []
    ahead = yield from _work(ahead_ids or [], _step_s(infos))
    if rank > len(ahead) and ahead:
        ahead += [sum(ahead) / len(ahead)] * (rank - len(ahead))
    start, finish = schedule(free_at, [*waiting, *ahead], own * _step_s(infos))
    return Eta(int(rank), start, finish)


def _slots_free_at(infos: Sequence[WorkerInfo], step: dict[str, float]) -> Flow:
    """When each slot of the live workers frees up (seconds from now), and the work of jobs that
    run on a worker beyond its slots (preemption's reserve: they wait for a slot there)."""
    running = yield Call("zrange", (keys.RUNNING, 0, -1))
    fields = ["params", "tokens", "lease_owner"]
    rows = yield Batch([Call("hmget", (keys.job(i), fields)) for i in running or []])
    busy: dict[str, list[float]] = {w.id: [] for w in infos}
    for params, done, owner in rows:
        if owner in busy:
            busy[owner].append(max(_tokens(params) - int(done or 0), 0) * step[owner])
    free_at: list[float] = []
    waiting: list[float] = []
    for w in infos:
        times = sorted(busy[w.id])
        free_at += times[: w.slots] + [0.0] * max(w.slots - len(times), 0)
        waiting += times[w.slots :]
    return free_at, waiting


def _work(ids: Sequence[str], step_s: float) -> Flow:
    """Seconds of decoding each queued job needs (its ``max_new_tokens`` steps)."""
    rows = yield Batch([Call("hget", (keys.job(i), "params")) for i in ids])
    return [_tokens(p) * step_s for p in rows]
