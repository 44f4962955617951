"""Messages a dead worker had received but not yet started: found in the broker, sent again.

kombu's Redis transport keeps every delivered, un-acked message in the hash ``unacked`` (indexed by
delivery time in the zset ``unacked_index``) and hands it out again only after the visibility
timeout (an hour or more). A worker that is SIGKILLed between receiving a GENERATE_TASK message
and claiming its job leaves that job ``queued`` with its only message parked there. A live worker
claims within milliseconds of receiving, so the reaper treats a message delivered more than
``min_age`` seconds ago whose job is still queued as orphaned: it sends a new message for the job,
then drops the parked one. A duplicate message (a race with a slow worker) is harmless: the claim
fence lets one run.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from worker.jobstore import JobStatus, JobStore
from worker.protocol import GENERATE_TASK

log = logging.getLogger(__name__)

#: kombu's default key names (transport options unacked_key / unacked_index_key).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def generate_job_id(raw: str) -> str | None:
    """The job id of a parked GENERATE_TASK message (``[message, exchange, routing_key]`` JSON)."""
    try:
        message = json.loads(raw)[0]
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
    store: JobStore, send: Callable[[str, int], None], *, min_age: float, limit: int = 500
) -> list[str]:
    """Re-send the messages of queued jobs parked in ``unacked`` for over ``min_age`` seconds.

    Parked messages of jobs that are terminal or gone are dropped too (they could only be fenced
    out an hour from now). Running jobs are left alone: their leases cover them. Returns the ids
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
        if record is not None and record.status is JobStatus.QUEUED:
            send(job_id, record.priority)  # first the new message, so a crash here loses nothing
            rescued.append(job_id)
            log.warning("reaper: job %s was parked with a dead worker; sent again", job_id)
        pipe = client.pipeline(transaction=True)
        pipe.zrem(UNACKED_INDEX, tag)
        pipe.hdel(UNACKED, tag)
        pipe.execute()
    return rescued
