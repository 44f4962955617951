"""Server-Sent Events of one job, read from its Redis stream.

Events: ``token`` (data ``{"text": delta, "index": choice}``, plus ``"logprobs"``: the delta's tokens'
entries, when the job asked for logprobs), ``reset`` (data ``{"reason"}``: text so far is void;
only when a requeued job could not resume from its stream, which holds its token ids: a job that
goes back to the queue normally continues its stream, with no reset and no repeated text) and
finally ``done`` (data = the job object). One stream entry may hold deltas of several choices: they
go out as consecutive ``token`` events, and only the last carries the entry's id, so
``Last-Event-ID`` resumes exactly after the last entry a client saw whole; deltas without text or
logprobs (ids whose text is still held back) send nothing. While the job is queued or running, an
``eta`` event (data ``{"queue_position", "estimated_start_at", "estimated_finish_at"}``, no id)
comes first and again whenever the stream was quiet for ``BLOCK_MS``. The stream is only read, so a
client that goes away never affects the job.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from tnllm.api.submit import to_public
from tnllm.store import AsyncJobStore, JobStatus, StreamEntry

#: How long one XREAD waits for new entries before the record is checked (must stay below the
#: Redis client's socket_timeout).
BLOCK_MS = 5000
READ_COUNT = 256
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def valid_event_id(value: str) -> bool:
    """True for a Redis stream entry id (``<ms>-<seq>``)."""
    return bool(_ENTRY_ID.match(value))


async def job_events(store: AsyncJobStore, job_id: str, after: str = "0-0") -> AsyncIterator[ServerSentEvent]:
    """Replay the job's stream after entry ``after``, then follow it live until ``done``."""
    block: int | None = None  # first read does not wait: a finished job answers at once
    if (first := await _eta(store, job_id)) is not None:
        yield first
    while True:
        entries = await store.read_stream(job_id, after=after, block_ms=block, count=READ_COUNT)
        block = BLOCK_MS
        if not entries:
            # Quiet: the job may be queued, slow, or its stream may be gone (expired together
            # with the record). A terminal record without a new done entry ends the stream here.
            record = await store.get(job_id)
            if record is None:
                return
            if record.terminal:
                yield _done(await _public_json(store, job_id), after)
                return
            if (update := await _eta(store, job_id)) is not None:
                yield update
            continue
        for entry in entries:
            after = entry.id
            if entry.type == "token":
                for event in token_events(entry):
                    yield event
            elif entry.type == "reset":
                yield ServerSentEvent(data=json.dumps({"reason": entry.reason}), event="reset", id=entry.id)
            else:
                yield _done(await _public_json(store, job_id), entry.id)
                return


async def _eta(store: AsyncJobStore, job_id: str) -> ServerSentEvent | None:
    """The ``eta`` event of a queued or running job (None otherwise)."""
    record = await store.get(job_id)
    if record is None or record.terminal or record.status is JobStatus.PAUSED:
        return None
    public = await to_public(store, record)
    if public.estimated_start_at is None and public.estimated_finish_at is None:
        return None  # no live worker: nothing to estimate from
    fields = {"queue_position", "estimated_start_at", "estimated_finish_at"}
    return ServerSentEvent(data=public.model_dump_json(include=fields), event="eta")


def token_events(entry: StreamEntry) -> list[ServerSentEvent]:
    """The ``token`` events of one stream entry, one per choice delta; the last carries its id."""
    events = []
    deltas = [d for d in entry.deltas if d.text or d.logprobs]
    for i, delta in enumerate(deltas):
        data = delta.model_dump(mode="json", exclude_none=True)
        last = i == len(deltas) - 1
        events.append(ServerSentEvent(data=json.dumps(data), event="token", id=entry.id if last else None))
    return events


async def _public_json(store: AsyncJobStore, job_id: str) -> str:
    record = await store.get(job_id)
    if record is None:
        return json.dumps({"id": job_id, "status": "expired"})
    return (await to_public(store, record)).model_dump_json()


def _done(data: str, event_id: str) -> ServerSentEvent:
    return ServerSentEvent(data=data, event="done", id=event_id)
