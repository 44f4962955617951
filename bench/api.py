"""HTTP API costs: submit throughput, job reads, and how fast ``?wait`` / SSE notice a finished job.

A real redis-server (AOF on) and a real ``tnllm api`` (uvicorn) subprocess; no GPU worker: the
worker's part (claim, deltas, finish) is played by the real synchronous job store. Baseline in the
same run: ``GET /healthz`` on the same server (the HTTP + framework floor under every route).

    python -m bench.api [--requests 2000] [--concurrency 16] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tnllm.config import Settings
from tnllm.store import JobResult, JobStatus, JobStore
from tnllm.store.server import RedisServer, free_port


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    """Run ``one(i)`` for i < n with ``concurrency`` in flight; rate and latency percentiles."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            start = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "per_s": n / wall,
        "p50_ms": 1000 * _pct(latencies, 0.5),
        "p99_ms": 1000 * _pct(latencies, 0.99),
    }


def _finish_later(store: JobStore, job_id: str, stamps: list[float]) -> None:
    time.sleep(0.05)  # let the request park first
    stamps.append(time.perf_counter())
    store.finish(job_id, "bench", JobStatus.SUCCEEDED, result=JobResult(text="", finish_reason="stop"))


async def _wake_latency(
    client: httpx.AsyncClient, store: JobStore, samples: int, stream: bool
) -> dict[str, float]:
    """Time from the worker's terminal write to the waiting client's answer (``?wait`` or SSE done)."""
    delays: list[float] = []
    for _ in range(samples):
        job = (await client.post("/v1/jobs", json={"prompt": "x"})).json()
        assert store.claim(job["id"], "bench").won
        if stream:
            request = client.stream("GET", f"/v1/jobs/{job['id']}/stream")
        else:
            request = client.stream("GET", f"/v1/jobs/{job['id']}", params={"wait": 10})
        finished_at: list[float] = []
        thread = threading.Thread(target=_finish_later, args=(store, job["id"], finished_at))
        thread.start()  # finishes 50 ms from now, while the request below is parked
        async with request as response:
            async for line in response.aiter_lines():
                if not stream or line.startswith("event: done"):
                    break
            done = time.perf_counter()
        thread.join()
        delays.append(done - finished_at[0])
    return {"p50_ms": 1000 * _pct(delays, 0.5), "p99_ms": 1000 * _pct(delays, 0.99)}


async def _bench(url: str, store: JobStore, n: int, concurrency: int) -> dict[str, dict[str, float]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        ids: list[str] = []

        async def health(_: int) -> None:
            (await client.get("/healthz")).raise_for_status()

        async def submit(i: int) -> None:
            r = await client.post("/v1/jobs", json={"prompt": f"prompt {i}", "max_new_tokens": 16})
            r.raise_for_status()
            ids.append(r.json()["id"])

        async def read(i: int) -> None:
            (await client.get(f"/v1/jobs/{ids[i % len(ids)]}")).raise_for_status()

        await _load(100, concurrency, health)  # warm-up
        out = {
            "baseline GET /healthz": await _load(n, concurrency, health),
            "POST /v1/jobs": await _load(n, concurrency, submit),
            "GET /v1/jobs/{id}": await _load(n, concurrency, read),
        }
        out["?wait wake-up after finish"] = await _wake_latency(client, store, 50, stream=False)
        out["SSE done after finish"] = await _wake_latency(client, store, 50, stream=True)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis", die_with_parent=True).start()
        port = free_port()
        env = {
            **os.environ,
            "TNLLM_REDIS_URL": redis.url,
            "TNLLM_DATA_DIR": str(Path(tmp) / "data"),
            "TNLLM_MODEL": "demo",
            "TNLLM_MAX_QUEUED": str(10 * args.requests + 1000),
            "TNLLM_LOG_LEVEL": "WARNING",
        }
        api = subprocess.Popen(
            [sys.executable, "-m", "tnllm.cli.main", "api", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        store = JobStore.from_settings(Settings(redis_url=redis.url))
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError("the API did not start")
                time.sleep(0.2)
            results = asyncio.run(_bench(url, store, args.requests, args.concurrency))
        finally:
            store.client.close()
            api.terminate()
            api.wait(timeout=30)
            redis.stop()
    meta = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    print(f"{'measurement':32} {'per s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for name, row in results.items():
        rate = f"{row['per_s']:.0f}" if "per_s" in row else "-"
        print(f"{name:32} {rate:>9} {row['p50_ms']:9.2f} {row['p99_ms']:9.2f}")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
