"""``AsyncClient``: the asyncio Python client of the job API, ``Client``'s twin (same calls, same
retries, same events; the shared logic is ``tnllm.client.core``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from tnllm.client import core
from tnllm.client.core import Call, RetryPolicy, StreamEvent
from tnllm.client.errors import ApiStatusError, InvalidRequest, WaitTimeout
from tnllm.protocol.http import JobCreate
from tnllm.protocol.jobs import JobPublic


class AsyncClient:
    """Submit, follow, cancel and list jobs of a tnllm server, from asyncio code (see ``Client``).

    ``url`` defaults to ``http://127.0.0.1:8000``; ``api_key`` is sent as a bearer token. Calls that
    may be repeated are retried on connection errors and 502/503/504 with backoff (``retry``);
    a submit gets a generated idempotency key unless ``auto_idempotency=False``, so its retry can
    never make a second job. ``http`` replaces the underlying ``httpx.AsyncClient`` (tests, proxies).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        auto_idempotency: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base_url = url or core.DEFAULT_URL
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)
        self.retry = retry or RetryPolicy()
        self.auto_idempotency = auto_idempotency

    @property
    def base_url(self) -> httpx.URL:
        """The server's address."""
        return self._http.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempts = core.Attempts(self.retry, call, self.base_url)
        timeout = call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=call.headers,
                    timeout=timeout,
                )  # fmt: skip
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
            else:
                pause = attempts.after_response(response)
                if pause is None:
                    return response
                delay = pause
            await asyncio.sleep(delay)

    async def submit(
        self,
        prompt: str | None = None,
        *,
        body: JobCreate | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobPublic:
        """Queue a job: ``prompt`` (or ``messages=[...]``) and any other field of the job body
        (``JobCreate``: sampling parameters, ``priority``, ``metadata``, ``webhook``), or a ready
        ``body``. Bad fields raise ``InvalidRequest`` before anything is sent."""
        job = core.job_body(prompt, body, fields)
        return core.read_job(await self._send(core.submit_call(job, idempotency_key, self.auto_idempotency)))

    async def get(self, job_id: str, *, wait: float = 0.0) -> JobPublic:
        """The job; with ``wait`` the server answers as soon as it ends (or after ``wait`` s)."""
        return core.read_job(await self._send(core.get_call(job_id, wait)))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        long_poll: float = 30.0,
        on_update: Callable[[JobPublic], object] | None = None,
    ) -> JobPublic:
        """Block until the job ends; ``on_update`` sees every state read on the way (a smaller
        ``long_poll`` reads more often). ``WaitTimeout`` after ``timeout`` seconds."""
        plan = core.WaitPlan(timeout, long_poll)
        while True:
            asked, started = plan.wait_s(), time.monotonic()
            try:
                job = await self.get(job_id, wait=asked)
            except InvalidRequest as exc:
                if plan.refused(exc):
                    continue
                raise
            if on_update is not None:
                on_update(job)
            if job.status.terminal:
                return job
            if plan.remaining() <= 0:
                raise WaitTimeout(f"job {job_id!r} still {job.status.value} after {timeout:g} s", job)
            await asyncio.sleep(plan.pause(asked, time.monotonic() - started))

    async def stream(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[StreamEvent]:
        """The job's events (``TokenEvent``, ``ResetEvent``, then one ``DoneEvent``), from the start
        or after ``last_event_id``; a dropped connection is resumed where it broke."""
        cursor = core.StreamCursor(job_id, self.retry, last_event_id)
        timeout = core.stream_timeout(self._http.timeout)
        while True:
            problem: Exception | None = None
            call = cursor.call()
            try:
                connection = aconnect_sse(self._http, "GET", call.path, headers=call.headers, timeout=timeout)
                async with connection as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        raise core.api_error(source.response)
                    async for sse in source.aiter_sse():
                        event = cursor.feed(sse.event, sse.data, sse.id or None)
                        if event is not None:
                            yield event
                        if cursor.done:
                            return
            except httpx.TransportError as exc:
                problem = exc
            except ApiStatusError as exc:
                problem = exc
            await asyncio.sleep(cursor.broken(problem))

    async def cancel(self, job_id: str) -> JobPublic:
        """Cancel the job: a queued one never runs, a running one stops soon (keeping its partial
        text). ``JobTerminal`` if it had already ended."""
        return core.read_job(await self._send(Call("POST", core.job_path(job_id, "/cancel"))))

    async def list_jobs(
        self, status: str | None = None, *, page_size: int = 20, limit: int | None = None
    ) -> AsyncIterator[JobPublic]:
        """The caller's jobs, newest first (optionally only ``status``), page after page."""
        cursor: str | None = None
        count = 0
        while True:
            page = core.read_page(await self._send(core.list_call(status, page_size, cursor)))
            for job in page.data:
                yield job
                count += 1
                if limit is not None and count >= limit:
                    return
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def redeliver(self, job_id: str) -> JobPublic:
        """Send the job's last webhook event again (``NoWebhookEvent`` when there is none)."""
        call = Call("POST", core.job_path(job_id, "/webhook/redeliver"), safe=False)
        return core.read_job(await self._send(call))
