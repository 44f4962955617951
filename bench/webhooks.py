"""Webhook costs: what a transition adds to the GPU worker's path, and event-to-receiver delivery.

Real parts: a redis-server, the job store, a real `tnllm webhook-worker` subprocess and a threaded
HTTP receiver on 127.0.0.1. Baselines measured in the same run: the job store's terminal write alone
(``finish``, which the worker does anyway) against ``notify_transition`` (the webhook enqueue), and
the same signed POSTs sent directly from 8 threads (no queue, no schedule, no log) against the
webhook worker's throughput.

    python -m bench.webhooks [--events 300] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tnllm.config import Settings
from tnllm.protocol.jobs import GenerationParams, JobResult, JobStatus, Usage
from tnllm.store.clients import redis_client
from tnllm.store.server import RedisServer
from tnllm.store.sync import JobStore
from tnllm.webhooks.signing import Signer
from tnllm.worker.events import notify_transition

SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdefgh").decode()
REPO = Path(__file__).resolve().parents[1]


class Receiver:
    """Counts deliveries and records (arrival time, event timestamp) per request."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.time()
                stamp = json.loads(body).get("timestamp", "")
                sent = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else now
                with outer.lock:
                    outer.arrivals.append((now, sent))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.arrivals)} of {n} deliveries arrived")
            time.sleep(0.01)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def run(n_events: int, concurrency: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tnllm-bench-webhooks-"))
    redis = RedisServer(tmp / "redis", die_with_parent=True).start()
    receiver = Receiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TNLLM_")}
    env.update(
        TNLLM_REDIS_URL=redis.url,
        TNLLM_WEBHOOK_SECRET=SECRET,
        TNLLM_WEBHOOK_ALLOWLIST="127.0.0.1",
        TNLLM_WEBHOOK_CONCURRENCY=str(concurrency),
        TNLLM_LOG_LEVEL="WARNING",
    )
    settings = Settings(redis_url=redis.url)
    store = JobStore(redis_client(redis.url), settings)
    log = (tmp / "webhook-worker.log").open("wb")
    worker: subprocess.Popen[bytes] | None = None
    try:
        # all events first, with no webhook worker yet: the schedule holds them (and the enqueue is
        # timed on its own); then the worker drains the backlog
        finish_s, notify_s = _transitions(store, receiver.url, "job", n_events)
        worker = subprocess.Popen(
            [sys.executable, "-m", "tnllm.cli.main", "webhook-worker"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
        )
        receiver.wait(n_events, 300)
        arrivals = sorted(a for a, _ in receiver.arrivals)
        drain_rate = (n_events - 1) / (arrivals[-1] - arrivals[0])
        idle_ms = _idle_latency(store, receiver, 20)
        direct_rate = _direct(receiver, n_events, concurrency)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        log.close()
        store.client.close()
        receiver.server.shutdown()
        redis.stop()
    return {
        "events": n_events,
        "concurrency": concurrency,
        "finish_ms_p50": statistics.median(finish_s) * 1000,
        "notify_ms_p50": statistics.median(notify_s) * 1000,
        "notify_ms_p99": _pct(notify_s, 0.99) * 1000,
        "idle_latency_ms_p50": statistics.median(idle_ms),
        "idle_latency_ms_max": max(idle_ms),
        "deliveries_per_s": drain_rate,
        "direct_posts_per_s": direct_rate,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def _transitions(store: JobStore, url: str, prefix: str, n: int) -> tuple[list[float], list[float]]:
    """Run ``n`` jobs to succeeded as a worker does; time the terminal write and the webhook enqueue."""
    finish_s: list[float] = []
    notify_s: list[float] = []
    result = JobResult(
        text="x" * 200, finish_reason="stop", usage=Usage(prompt_tokens=8, completion_tokens=50)
    )
    for i in range(n):
        job_id = f"{prefix}-{i}"
        store.create(job_id=job_id, owner="bench", params=GenerationParams(prompt="hi"), webhook={
            "url": url, "events": ["job.succeeded"]})  # fmt: skip
        store.claim(job_id, "w")
        t0 = time.perf_counter()
        store.finish(job_id, "w", JobStatus.SUCCEEDED, result=result)
        t1 = time.perf_counter()
        notify_transition(store, store.get(job_id), "job.succeeded")
        t2 = time.perf_counter()
        finish_s.append(t1 - t0)
        notify_s.append(t2 - t1)
    return finish_s, notify_s


def _idle_latency(store: JobStore, receiver: Receiver, n: int) -> list[float]:
    """Event-to-receiver latency of single events on an idle system (one at a time), ms."""
    out = []
    for i in range(n):
        receiver.arrivals.clear()
        t0 = time.time()
        _transitions(store, receiver.url, f"idle{i}", 1)
        receiver.wait(1, 30)
        out.append((receiver.arrivals[0][0] - t0) * 1000)
    return out


def _direct(receiver: Receiver, n: int, concurrency: int) -> float:
    """Baseline: the same signed POSTs from ``concurrency`` threads over one keep-alive client (no
    queue, no schedule, no log, no DNS/SSRF check, no new connection per delivery)."""
    signer = Signer([SECRET])
    body = json.dumps({"type": "job.succeeded", "timestamp": "", "data": {"id": "x", "text": "x" * 200}})
    receiver.arrivals.clear()
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=concurrency)) as client:

        def post(i: int) -> None:
            client.post(receiver.url, content=body, headers=signer.headers(f"msg_{i}", body))

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, range(n)))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.events, args.concurrency)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    rows = [
        ("store.finish (baseline: the worker's terminal write)", f"{out['finish_ms_p50']:.2f} ms p50"),
        (
            "notify_transition (webhook enqueue)",
            f"{out['notify_ms_p50']:.2f} ms p50, {out['notify_ms_p99']:.2f} p99",
        ),
        (
            "event -> receiver, idle",
            f"{out['idle_latency_ms_p50']:.0f} ms p50, {out['idle_latency_ms_max']:.0f} max",
        ),
        ("webhook worker draining a backlog", f"{out['deliveries_per_s']:.0f} deliveries/s"),
        ("baseline: direct signed POSTs, same threads", f"{out['direct_posts_per_s']:.0f} posts/s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
