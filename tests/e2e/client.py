"""A small HTTP client for the e2e tests (httpx against the real uvicorn server)."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


class Jobs:
    """Submit and follow jobs over HTTP."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30.0)

    def submit(self, prompt: str = "Hello", **body: Any) -> dict[str, Any]:
        """POST /v1/jobs; returns the job object (asserts 202)."""
        response = self.http.post("/v1/jobs", json={"prompt": prompt, **body})
        assert response.status_code == 202, response.text
        return dict(response.json())

    def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """GET /v1/jobs/{id} (optionally ?wait=)."""
        params = {"wait": wait} if wait else None
        response = self.http.get(f"/v1/jobs/{job_id}", params=params, timeout=(wait or 0) + 30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 60.0) -> dict[str, Any]:
        """Poll until the job's status is in ``statuses``."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
            time.sleep(0.1)
            job = self.get(job_id)
        return job

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Long-poll (?wait=) until terminal."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id, wait=min(10.0, max(1.0, deadline - time.monotonic())))
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not terminal after {timeout}s: {job}")

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


def debug(**faults: Any) -> dict[str, Any]:
    """Job metadata asking a worker started with TNLLM_DEBUG_FAULTS=1 for test faults."""
    return {"tnllm_debug": faults}


class Producer:
    """Creates jobs the way the API does (store record, then a Celery message), without HTTP.

    Used where a test is about workers and Redis rather than the HTTP layer.
    """

    def __init__(self, settings: Any) -> None:
        from tnllm.protocol.celery import make_celery
        from tnllm.store import JobStore

        self.store = JobStore.from_settings(settings)
        self.app = make_celery(settings)

    def submit(self, prompt: str = "Hello", *, priority: int = 0, metadata: Any = None, **params: Any) -> str:
        """Store a queued job and send its message; returns the job id."""
        import uuid

        from tnllm.protocol.celery import send_generate
        from tnllm.store import GenerationParams

        job_id = uuid.uuid4().hex
        outcome = self.store.create(
            job_id=job_id,
            owner="anonymous",
            params=GenerationParams(prompt=prompt, **params),
            priority=priority,
            metadata=metadata or {},
        )
        assert outcome.kind == "created", outcome
        send_generate(self.app, job_id, priority)
        return job_id

    def wait_all(self, ids: list[str], timeout: float, on_tick: Any = None) -> list[Any]:
        """Poll the store until every job is terminal; returns the records."""
        deadline = time.monotonic() + timeout
        while True:
            records = [self.store.get(i) for i in ids]
            if all(r is not None and r.terminal for r in records):
                return records
            if time.monotonic() > deadline:
                pending = [(r.id, r.status.value, r.attempt) for r in records if r and not r.terminal]
                raise AssertionError(f"{len(pending)} jobs not terminal after {timeout}s: {pending[:10]}")
            if on_tick is not None:
                on_tick()
            time.sleep(0.2)

    def done_entries(self, job_id: str) -> list[dict[str, str]]:
        """The ``done`` entries of a job's stream (exactly one once it is terminal)."""
        from tnllm.store import keys

        return [f for _, f in self.store.client.xrange(keys.stream(job_id)) if f.get("t") == "done"]

    def close(self) -> None:
        """Close connections."""
        self.app.close()
        self.store.client.close()
