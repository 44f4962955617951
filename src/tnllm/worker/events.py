"""Job transition hook: the one place workers report `job.running`, `job.succeeded`, ... events.

``notify_transition`` is called by the task runner and the reaper after every transition they make.
For a job that subscribed to the event it enqueues a webhook delivery: one Redis script that logs the
delivery in the job record and puts it on the webhook schedule (``tnllm/store/webhooks.py``); the
CPU webhook worker sends it. It stays cheap (no HTTP here) and never raises into the caller.
"""

from __future__ import annotations

import logging
import time

import redis

from tnllm.protocol.jobs import JobRecord
from tnllm.store.sync import JobStore
from tnllm.store.webhooks import WebhookStore

log = logging.getLogger(__name__)

#: Event names, one per state a job enters.
EVENTS = ("job.running", "job.succeeded", "job.failed", "job.cancelled")
#: How long a transition keeps trying to enqueue its webhook through a Redis outage (seconds).
ENQUEUE_RETRY_S = 5.0


def notify_transition(store: JobStore, job: JobRecord | None, event: str) -> None:
    """Report that ``job`` (the record after the transition) just entered ``event``'s state."""
    if job is None:
        return
    log.debug("job %s: %s", job.id, event)
    if not job.webhook:
        return
    data = job.to_public().model_dump(mode="json")
    hooks = WebhookStore(store.client, store.ttl)
    end = time.monotonic() + ENQUEUE_RETRY_S
    delay = 0.1
    while True:
        try:
            hooks.enqueue(job.id, event, data)
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() >= end:
                log.error("job %s: webhook %s not enqueued, Redis unavailable: %s", job.id, event, exc)
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except Exception:  # the transition itself stands; a webhook bug must not fail the job
            log.exception("job %s: webhook %s not enqueued", job.id, event)
            return
