"""Waiting for and streaming the jobs behind an OpenAI-route request, and cancelling them when the
client goes away.

A job's Redis stream can hold a ``reset`` (its worker died and another runs it again). OpenAI's
chunks cannot take text back, so ``job_deltas`` passes the re-generated text over until it goes
past what was already sent; a re-run that differs from the text already sent (sampling without a
seed) ends the stream with an error event instead of a silently wrong concatenation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
from fastapi import Request

from tnllm.api.deps import Services
from tnllm.api.notify import wait_for_terminal
from tnllm.api.sse import BLOCK_MS, READ_COUNT
from tnllm.api.webhooks import notify_transition_async
from tnllm.protocol.outputs import ChoiceDelta, TokenLogprob
from tnllm.store import AsyncJobStore, CancelKind, JobRecord


class Diverged(Exception):
    """A job's re-run produced other text than the one already streamed."""


#: One step of a job's stream for a client: (choice index, new text, the new tokens' logprobs).
Delta = tuple[int, str, list[TokenLogprob] | None]


class _Replay:
    """Per choice: what was sent, and what the current run has produced (reset by a ``reset``)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.sent: dict[int, str] = {}
        self.run: dict[int, str] = {}
        self.sent_lp: dict[int, int] = {}
        self.run_lp: dict[int, int] = {}

    def reset(self) -> None:
        self.run.clear()
        self.run_lp.clear()

    def advance(self, delta: ChoiceDelta) -> Delta | None:
        i = delta.index
        text, already = self.run.get(i, "") + delta.text, self.sent.get(i, "")
        self.run[i] = text
        if not (text.startswith(already) or already.startswith(text)):
            raise Diverged(self.job_id)
        new_text = text[len(already) :] if len(text) > len(already) else ""
        if new_text:
            self.sent[i] = text
        new_lps = None
        if delta.logprobs is not None:
            before = self.run_lp.get(i, 0)
            self.run_lp[i] = before + len(delta.logprobs)
            new_lps = delta.logprobs[max(0, self.sent_lp.get(i, 0) - before) :]
            self.sent_lp[i] = max(self.sent_lp.get(i, 0), self.run_lp[i])
        return (i, new_text, new_lps or None) if new_text or new_lps else None


async def job_deltas(store: AsyncJobStore, job_id: str) -> AsyncIterator[Delta]:
    """The per-choice deltas of a job until it ends (re-runs after a ``reset`` passed over)."""
    replay, after = _Replay(job_id), "0-0"
    block: int | None = None  # the first read does not wait: a finished job answers at once
    while True:
        entries = await store.read_stream(job_id, after=after, block_ms=block, count=READ_COUNT)
        block = BLOCK_MS
        if not entries:
            record = await store.get(job_id)
            if record is None or record.terminal:
                return
            continue
        for entry in entries:
            after = entry.id
            if entry.type == "reset":
                replay.reset()
            elif entry.type == "done":
                return
            else:
                for delta in entry.deltas:
                    if (out := replay.advance(delta)) is not None:
                        yield out


async def cancel_jobs(services: Services, job_ids: Sequence[str]) -> None:
    """Cancel jobs whose client went away (a queued one never starts, a running one stops)."""
    store = services.store
    for job_id in job_ids:
        outcome = await store.cancel(job_id)
        if outcome.kind is CancelKind.CANCELLED:  # the API made this transition: it reports it
            record = await store.get(job_id)
            if record is not None and record.webhook:
                await notify_transition_async(store, record, "job.cancelled")


async def _disconnected(request: Request) -> None:
    # The body was read by the route already: the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_jobs(
    request: Request, services: Services, job_ids: Sequence[str], timeout: float
) -> list[JobRecord] | None:
    """The records once every job ended (or as they are after ``timeout``); None when the client
    disconnected first, in which case the jobs were cancelled."""
    store, watcher = services.store, services.watcher
    deadline = time.monotonic() + timeout

    async def wait_all() -> list[JobRecord]:
        records = []
        for job_id in job_ids:
            record = await wait_for_terminal(store, watcher, job_id, max(0.0, deadline - time.monotonic()))
            assert record is not None  # just created; records live for result_ttl
            records.append(record)
        return records

    waiter = asyncio.ensure_future(wait_all())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, gone):
            task.cancel()
    if waiter.done() and not waiter.cancelled():
        return waiter.result()
    await cancel_jobs(services, job_ids)
    return None


async def merged(streams: Sequence[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta | None]]:
    """``(i, delta)`` from several streams as they come, ``(i, None)`` when stream ``i`` ends."""
    queue: asyncio.Queue[tuple[int, Delta | None] | BaseException] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((i, delta))
            await queue.put((i, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(tasks)
        while open_streams:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            open_streams -= item[1] is None
            yield item
    finally:
        for task in tasks:
            task.cancel()


async def cancel_unless_finished(
    chunks: AsyncIterator[str], services: Services, job_ids: Sequence[str]
) -> AsyncIterator[str]:
    """``chunks``, cancelling the jobs when the stream stops early (the client disconnected)."""
    finished = False
    try:
        async for chunk in chunks:
            yield chunk
        finished = True
    finally:
        if not finished:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await cancel_jobs(services, job_ids)


def error_event(message: str, code: str, status: int = 500) -> dict[str, Any]:
    """An ``{"error": ...}`` chunk (the openai client raises it as an APIError)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


#: (choice index, text or None, finish reason or None, logprobs or None) -> one chunk.
ChunkMaker = Callable[[int, str | None, str | None, list[TokenLogprob] | None], dict[str, Any]]
