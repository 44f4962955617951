"""Queued jobs whose Celery message a dead worker took with it: found, and sent again.

kombu's Redis transport keeps every delivered, un-acked message in the hash ``unacked`` (indexed by
delivery time in the zset ``unacked_index``) and hands it out again only after the visibility
timeout (an hour or more). A worker that is SIGKILLed between receiving a GENERATE_TASK message
and claiming its job leaves that job ``queued`` with its only message parked there. A live worker
claims within milliseconds of receiving, so the reaper treats a message delivered more than
``min_age`` seconds ago whose job is still queued as orphaned: it sends a new message for the job,
then drops the parked one. A duplicate message (a race with a slow worker) is harmless: the claim
fence lets one run.

kombu moves a message from the queue list to ``unacked`` in two steps (BRPOP, then a write); a
worker killed in between loses the message outright, and a worker that dies leaves the messages
of its own queue (continuations routed to it) with no consumer. ``resend_messageless`` catches both:
when the queue of job ids holds more jobs than the broker holds generate messages, it looks for the
queued jobs (older than ``min_age``) that have no message anywhere and sends them one.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tnllm.protocol.celery import broker_lists
from tnllm.protocol.tasks import GENERATE_QUEUE, GENERATE_TASK, WORKER_QUEUE_PREFIX
from tnllm.store import JobStatus, JobStore, keys

log = logging.getLogger(__name__)

#: kombu's default key names (transport options unacked_key / unacked_index_key).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def generate_job_id(raw: str) -> str | None:
    """The job id of a parked GENERATE_TASK message (``[message, exchange, routing_key]`` JSON)."""
    try:
        return message_job_id(json.loads(raw)[0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def message_job_id(message: Any) -> str | None:
    """The job id of a kombu message dict carrying a GENERATE_TASK (else None)."""
    try:
        if message.get("headers", {}).get("task") != GENERATE_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def rescue_orphans(
    store: JobStore,
    send: Callable[[str, int], None],
    *,
    min_age: float,
    already_sent: frozenset[str] = frozenset(),
    limit: int = 500,
) -> list[str]:
    """Re-send the messages of queued jobs parked in ``unacked`` for over ``min_age`` seconds.

    Parked messages of jobs that are terminal or gone are dropped too (they could only be fenced
    out an hour from now), and so are those of jobs in ``already_sent`` (requeued by the reaper
    this round). Running jobs are left alone: their leases cover them. Returns the ids
    of the jobs that got a new message.
    """
    client: Any = store.client
    tags = client.zrangebyscore(UNACKED_INDEX, "-inf", time.time() - min_age, start=0, num=limit)
    if not tags:
        return []
    raws = client.hmget(UNACKED, tags)
    rescued: list[str] = []
    for tag, raw in zip(tags, raws, strict=True):
        job_id = generate_job_id(raw) if raw else None
        if job_id is None:
            continue
        record = store.get(job_id)
        if record is not None and record.status is JobStatus.RUNNING:
            continue
        if record is not None and record.status is JobStatus.QUEUED and job_id not in already_sent:
            send(job_id, record.priority)  # first the new message, so a crash here loses nothing
            rescued.append(job_id)
            log.warning("reaper: job %s was parked with a dead worker; sent again", job_id)
        pipe = client.pipeline(transaction=True)
        pipe.zrem(UNACKED_INDEX, tag)
        pipe.hdel(UNACKED, tag)
        pipe.execute()
    return rescued


def resend_messageless(store: JobStore, send: Callable[[str, int], None], *, min_age: float) -> list[str]:
    """Send a message for every queued job (older than ``min_age``) that has none in the broker.

    Cheap when nothing is missing (a few LLENs); the full scan runs only when the job queue holds
    more ids than the broker holds messages that could be theirs.
    """
    client: Any = store.client
    queued = int(client.zcard(keys.QUEUE))
    if not queued:
        return []
    # the shared queue and the own queues of live workers (a dead worker's own queue has no
    # consumer: a continuation waiting there counts as messageless and is sent to the shared queue)
    queues = {
        GENERATE_QUEUE,
        *(q for w in store.workers() for q in w.queues if q.startswith(WORKER_QUEUE_PREFIX)),
    }
    lists = [name for q in sorted(queues) for name in broker_lists(q).values()]
    pipe = client.pipeline(transaction=False)
    for name in lists:
        pipe.llen(name)
    pipe.hlen(UNACKED)
    pipe.zcard(keys.RUNNING)
    *depths, parked, running = (int(n) for n in pipe.execute())
    # Every running job holds at least one un-acked message: those cannot stand for queued jobs.
    if sum(depths) + parked - running >= queued:
        return []
    present: set[str | None] = set()
    for name in lists:
        present.update(message_job_id(_loads(raw)) for raw in client.lrange(name, 0, -1))
    present.update(generate_job_id(raw) for raw in client.hvals(UNACKED))
    cutoff_ms = (time.time() - min_age) * 1000
    sent: list[str] = []
    for job_id, score in client.zrange(keys.QUEUE, 0, -1, withscores=True):
        if job_id in present or int(score) % keys.PRIORITY_BAND > cutoff_ms:
            continue
        record = store.get(job_id)
        if record is None or record.status is not JobStatus.QUEUED:
            continue
        send(job_id, record.priority)
        sent.append(job_id)
        log.warning("reaper: queued job %s had no message in the broker; sent one", job_id)
    return sent


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
