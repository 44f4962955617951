"""``Client``: the blocking Python client of the job API (httpx; SSE through httpx-sse)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

from tnllm.client import core
from tnllm.client.core import Call, RetryPolicy, StreamEvent
from tnllm.client.errors import ApiStatusError, InvalidRequest, WaitTimeout
from tnllm.protocol.http import JobCreate
from tnllm.protocol.jobs import JobPublic


class Client:
    """Submit, follow, cancel and list jobs of a tnllm server.

    ``url`` defaults to ``http://127.0.0.1:8000``; ``api_key`` is sent as a bearer token. Calls that
    may be repeated are retried on connection errors and 502/503/504 with backoff (``retry``);
    a submit gets a generated idempotency key unless ``auto_idempotency=False``, so its retry can
    never make a second job. ``http`` replaces the underlying ``httpx.Client`` (tests, proxies).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        auto_idempotency: bool = True,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base_url = url or core.DEFAULT_URL
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        self.retry = retry or RetryPolicy()
        self.auto_idempotency = auto_idempotency

    @property
    def base_url(self) -> httpx.URL:
        """The server's address."""
        return self._http.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
        attempts = core.Attempts(self.retry, call, self.base_url)
        timeout = call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT
        while True:
            try:
                response = self._http.request(
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
            time.sleep(delay)

    def submit(
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
        return core.read_job(self._send(core.submit_call(job, idempotency_key, self.auto_idempotency)))

    def get(self, job_id: str, *, wait: float = 0.0) -> JobPublic:
        """The job; with ``wait`` the server answers as soon as it ends (or after ``wait`` s)."""
        return core.read_job(self._send(core.get_call(job_id, wait)))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        long_poll: float = 30.0,
        on_update: Callable[[JobPublic], None] | None = None,
    ) -> JobPublic:
        """Block until the job ends; ``on_update`` sees every state read on the way (a smaller
        ``long_poll`` reads more often). ``WaitTimeout`` after ``timeout`` seconds."""
        plan = core.WaitPlan(timeout, long_poll)
        while True:
            asked, started = plan.wait_s(), time.monotonic()
            try:
                job = self.get(job_id, wait=asked)
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
            time.sleep(plan.pause(asked, time.monotonic() - started))

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """The job's events (``TokenEvent``, ``ResetEvent``, then one ``DoneEvent``), from the start
        or after ``last_event_id``; a dropped connection is resumed where it broke."""
        cursor = core.StreamCursor(job_id, self.retry, last_event_id)
        timeout = core.stream_timeout(self._http.timeout)
        while True:
            problem: Exception | None = None
            call = cursor.call()
            try:
                connection = connect_sse(self._http, "GET", call.path, headers=call.headers, timeout=timeout)
                with connection as source:
                    if not source.response.is_success:
                        source.response.read()
                        raise core.api_error(source.response)
                    for sse in source.iter_sse():
                        event = cursor.feed(sse.event, sse.data, sse.id or None)
                        if event is not None:
                            yield event
                        if cursor.done:
                            return
            except httpx.TransportError as exc:
                problem = exc
            except ApiStatusError as exc:
                problem = exc
            time.sleep(cursor.broken(problem))

    def cancel(self, job_id: str) -> JobPublic:
        """Cancel the job: a queued one never runs, a running one stops soon (keeping its partial
        text). ``JobTerminal`` if it had already ended."""
        return core.read_job(self._send(Call("POST", core.job_path(job_id, "/cancel"))))

    def list_jobs(
        self, status: str | None = None, *, page_size: int = 20, limit: int | None = None
    ) -> Iterator[JobPublic]:
        """The caller's jobs, newest first (optionally only ``status``), page after page."""
        cursor: str | None = None
        count = 0
        while True:
            page = core.read_page(self._send(core.list_call(status, page_size, cursor)))
            for job in page.data:
                yield job
                count += 1
                if limit is not None and count >= limit:
                    return
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def redeliver(self, job_id: str) -> JobPublic:
        """Send the job's last webhook event again (``NoWebhookEvent`` when there is none)."""
        call = Call("POST", core.job_path(job_id, "/webhook/redeliver"), safe=False)
        return core.read_job(self._send(call))
