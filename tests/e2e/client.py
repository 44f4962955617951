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
