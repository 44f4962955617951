"""Job transition hook: the one place workers report `job.running`, `job.succeeded`, ... events.

``notify_transition`` is called by the task runner and the reaper after every transition they make.
For a job that subscribed to the event it enqueues a webhook delivery: one Redis script that logs the
delivery in the job record and puts it on the webhook schedule; the CPU webhook worker sends it. The
decision and the retry through a Redis outage are ``tnllm.store.webhooks.notify``, which the API's
transitions use too. It stays cheap (no HTTP here) and never raises into the caller.
"""

from __future__ import annotations

from tnllm.protocol.jobs import JobRecord
from tnllm.store.sync import JobStore
from tnllm.store.webhooks import WebhookStore


def notify_transition(store: JobStore, job: JobRecord | None, event: str) -> None:
    """Report that ``job`` (the record after the transition) just entered ``event``'s state."""
    WebhookStore(store.client, store.ttl).notify(job, event)
