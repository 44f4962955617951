"""Checks and routing of a ``continue_from`` job (docs/STATE.md), before it is stored.

The earlier job must be the caller's and succeeded, with its conversation stored by its worker
(``tnllm.store.states``); the new job's message goes to that worker's own queue while its heartbeat
is live, so its engine resumes from the state it kept. A continuation routed to a worker that dies
before it runs is sent to the shared queue by the reaper (``worker.orphans.resend_messageless``),
where any worker recomputes the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

from tnllm.api.deps import Services
from tnllm.api.errors import ApiError
from tnllm.protocol.tasks import GENERATE_QUEUE, worker_queue
from tnllm.store import GenerationParams, JobStatus
from tnllm.store.states import aload_conversation, aworker_alive


@dataclass(frozen=True)
class Route:
    """Where a job's message goes, and the tokens of the conversation it continues."""

    queue: str = GENERATE_QUEUE
    earlier_tokens: int = 0


async def continuation_route(services: Services, owner: str, params: GenerationParams) -> Route:
    """For a ``continue_from`` job: the earlier job must be the caller's (404) and succeeded with a
    stored conversation (409), and ``messages`` cannot follow raw text (422). Its message goes to
    the queue of the worker holding the earlier state while that worker's heartbeat is live, else
    to the shared queue (any worker recomputes the conversation)."""
    parent_id = params.continue_from
    if parent_id is None:
        return Route()
    store = services.store
    parent = await store.get(parent_id)
    if parent is None or parent.owner != owner:  # someone else's job is indistinguishable from none
        raise ApiError(404, f"continue_from: no job with id {parent_id!r}", field="continue_from")
    if parent.status is not JobStatus.SUCCEEDED:
        raise ApiError(
            409,
            f"continue_from: job {parent_id!r} is {parent.status.value}; "
            "only a succeeded job can be continued",
            type="not_continuable",
            field="continue_from",
        )
    conv = await aload_conversation(store.client, parent_id)
    if conv is None:
        raise ApiError(
            409,
            f"continue_from: job {parent_id!r} has no stored conversation (older than this feature?)",
            type="not_continuable",
            field="continue_from",
        )
    if params.messages is not None and conv.turns is None:
        raise ApiError(
            422, "continue_from: that job continued raw text; continue it with 'prompt'", field="messages"
        )
    queue = GENERATE_QUEUE
    if params.state_cache and await aworker_alive(store.client, conv.worker):
        queue = worker_queue(conv.worker)
    return Route(queue, len(conv.ids))
