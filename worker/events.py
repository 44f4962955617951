"""Job transition hook: the one place workers report `job.running`, `job.succeeded`, ... events.

``notify_transition`` is called by the task runner and the reaper after every transition they make.
It does nothing yet: the webhooks work replaces its body with enqueueing a WEBHOOK_TASK (queue
``webhooks``) for jobs that subscribed. It must stay cheap and must never raise into the caller.
"""

from __future__ import annotations

import logging

from worker.jobstore.records import JobRecord

log = logging.getLogger(__name__)

#: Event names, one per state a job enters.
EVENTS = ("job.running", "job.succeeded", "job.failed", "job.cancelled")


def notify_transition(job: JobRecord | None, event: str) -> None:
    """Report that ``job`` (the record after the transition) just entered ``event``'s state."""
    if job is None:
        return
    log.debug("job %s: %s", job.id, event)
