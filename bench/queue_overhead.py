"""What the queue path costs: submit throughput and added latency, beside plain Celery + Redis.

Starts a real redis-server (AOF on), one `tnllm worker` on the tiny demo model and `tnllm api`
(uvicorn), then measures in the same run:

- baseline: ECHO_TASK through the same Celery app and broker (send -> worker -> one Redis write ->
  client BLPOP): round-trip latency (sequential) and throughput (a burst);
- jobs: POST /v1/jobs with max_new_tokens=1, then GET ?wait= until terminal: latency submit ->
  result visible, the job's own run time (finished_at - started_at: claim, prompt, engine, finish),
  and their difference = what the queue path adds; submit throughput (202s/s from client threads)
  and completion throughput.

Then where a job's time and Redis round trips go (``bench.queue_trace``): a per-stage timeline of
sequential jobs under MONITOR, Redis commands per job and per echo task (INFO commandstats over a
burst), and, in the bench's own process, the API's prompt count and the engine alone (no queue).

    python -m bench.queue_overhead [--jobs 300] [--samples 100] [--threads 8] [--trace 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.queue_trace import per_unit_calls, trace_jobs
from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
from tnllm.config import Settings
from tnllm.protocol.celery import make_celery
from tnllm.protocol.tasks import ECHO_TASK, GENERATE_QUEUE
from tnllm.store import JobStore
from tnllm.store.server import RedisServer, free_port

#: The short job of every measurement.
JOB_BODY: dict[str, Any] = {"prompt": "Hi", "max_new_tokens": 1}


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds."""
    return {"p50_ms": pct(values, 50), "p99_ms": pct(values, 99), "mean_ms": 1000 * statistics.fmean(values)}


def start_services(
    tmp: Path, slots: int, api_processes: int = 1
) -> tuple[RedisServer, list[Child], str, Settings]:
    """Redis, one worker on the demo model, the API; returns them once the worker is ready."""
    from tnllm.model.demo import write_demo_checkpoint

    model = write_demo_checkpoint(tmp / "model", size="tiny", seed=0)
    server = RedisServer(tmp / "redis", die_with_parent=True).start()
    port = free_port()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": server.url, "TNLLM_MODEL": str(model), "TNLLM_DEVICE": "cpu",
         "TNLLM_ENGINE_SLOTS": str(slots), "TNLLM_DATA_DIR": str(tmp / "data"), "TNLLM_LOG_LEVEL": "WARNING",
         "TNLLM_MAX_QUEUED": "100000", "OMP_NUM_THREADS": "1", "TNLLM_API_PROCESSES": str(api_processes)},
    )  # fmt: skip
    children = [
        Child(
            "worker", tnllm_argv("worker", "--hostname", "bench@host"), env=env, log_path=tmp / "worker.log"
        ),
        Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=tmp / "api.log"),
    ]
    for child in children:
        child.start()
    settings = Settings(redis_url=server.url)
    store = JobStore.from_settings(settings)
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        dead = [c for c in children if not c.alive]
        if dead:
            raise SystemExit(f"{dead[0].name} exited:\n{dead[0].log_tail(30)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 and store.workers():
                return server, children, url, settings
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.2)
    raise SystemExit("services did not become ready")


def bench_echo(settings: Settings, samples: int, burst: int) -> dict[str, Any]:
    """Plain Celery + Redis: send ECHO_TASK, the worker RPUSHes, the client BLPOPs."""
    app = make_celery(settings)
    client = redis.Redis.from_url(str(settings.redis_url))
    key = f"bench:echo:{uuid.uuid4().hex}"
    for _ in range(5):  # warm the connections
        app.send_task(ECHO_TASK, args=[key, "w"], queue=GENERATE_QUEUE)
        client.blpop([key], timeout=30)
    latencies = []
    for i in range(samples):
        t0 = time.perf_counter()
        app.send_task(ECHO_TASK, args=[key, str(i)], queue=GENERATE_QUEUE)
        assert client.blpop([key], timeout=30) is not None
        latencies.append(time.perf_counter() - t0)
    times: dict[str, float] = {}

    def run_burst() -> None:
        t0 = time.perf_counter()
        for i in range(burst):
            app.send_task(ECHO_TASK, args=[key, str(i)], queue=GENERATE_QUEUE)
        times["sent"] = time.perf_counter() - t0
        for _ in range(burst):
            assert client.blpop([key], timeout=60) is not None
        times["total"] = time.perf_counter() - t0

    calls = per_unit_calls(client, burst, run_burst)
    app.close()
    client.close()
    return {
        "latency": summary(latencies),
        "send_per_s": burst / times["sent"],
        "done_per_s": burst / times["total"],
        "redis_calls_per_task": calls,
    }


def _job_times(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    return (finished - started).total_seconds()


def bench_jobs(url: str, redis_url: str, samples: int, total: int, threads: int) -> dict[str, Any]:
    """The job path over HTTP: submit, wait until the result is visible; then a burst from threads."""
    body = JOB_BODY
    http = httpx.Client(base_url=url, timeout=60)
    for _ in range(5):
        http.get(f"/v1/jobs/{http.post('/v1/jobs', json=body).json()['id']}", params={"wait": 30})
    latencies, runs, overheads, submits = [], [], [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        response = http.post("/v1/jobs", json=body)
        t1 = time.perf_counter()
        assert response.status_code == 202, response.text
        job = http.get(f"/v1/jobs/{response.json()['id']}", params={"wait": 30}).json()
        t2 = time.perf_counter()
        assert job["status"] == "succeeded", job
        latencies.append(t2 - t0)
        submits.append(t1 - t0)
        runs.append(_job_times(job))
        overheads.append((t2 - t0) - _job_times(job))
    per_thread = total // threads

    def submit_many(_: int) -> list[str]:
        with httpx.Client(base_url=url, timeout=60) as c:
            out = []
            for _ in range(per_thread):
                r = c.post("/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                out.append(r.json()["id"])
            return out

    ids: list[str] = []
    times: dict[str, float] = {}

    def run_burst() -> None:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ids.extend(i for chunk in pool.map(submit_many, range(threads)) for i in chunk)
        times["submitted"] = time.perf_counter() - t0
        for job_id in ids:
            job = http.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
            assert job["status"] == "succeeded", job
        times["done"] = time.perf_counter() - t0

    rclient = redis.Redis.from_url(redis_url)
    calls = per_unit_calls(rclient, per_thread * threads, run_burst)
    rclient.close()
    submitted, done = times["submitted"], times["done"]
    http.close()
    return {
        "latency": summary(latencies),
        "submit_request": summary(submits),
        "run": summary(runs),
        "added_by_queue_path": summary(overheads),
        "submit_per_s": len(ids) / submitted,
        "done_per_s": len(ids) / done,
        "burst_jobs": len(ids),
        "redis_calls_per_job": calls,
    }


def bench_local(model: Path, slots: int, samples: int, burst: int, iterations: int = 2000) -> dict[str, Any]:
    """In this process, no queue: the API's prompt count of the bench body, and the engine alone
    (the worker's settings and prompt ids, its own thread): one job after another, then a burst."""
    from tnllm.api.limits import PromptCounter
    from tnllm.engine.factory import build_engine
    from tnllm.engine.types import EngineRequest, SamplingParams
    from tnllm.store import GenerationParams
    from tnllm.text.prompt import render_prompt

    settings = Settings(model=str(model), device="cpu", engine_slots=slots)
    counter = PromptCounter(settings)
    params = GenerationParams(prompt=JOB_BODY["prompt"], max_new_tokens=1)
    counter.count(params)
    t0 = time.perf_counter()
    for _ in range(iterations):
        counter.count(params)
    count_us = 1e6 * (time.perf_counter() - t0) / iterations
    ids = render_prompt(counter.tokenizer(), params, settings.system_prompt)
    engine = build_engine(settings.engine_config())
    sampling = SamplingParams(max_new_tokens=1)
    engine.start()
    try:
        for i in range(5):
            engine.submit(EngineRequest(f"w{i}", ids, sampling), lambda ev: None).result(timeout=60)
        latencies = []
        for i in range(samples):
            t0 = time.perf_counter()
            engine.submit(EngineRequest(f"s{i}", ids, sampling), lambda ev: None).result(timeout=60)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        handles = [
            engine.submit(EngineRequest(f"b{i}", ids, sampling), lambda ev: None) for i in range(burst)
        ]
        for h in handles:
            h.result(timeout=300)
        rate = burst / (time.perf_counter() - t0)
    finally:
        engine.stop()
    return {"count_us": count_us, "engine_latency": summary(latencies), "engine_done_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print a table (or JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300, help="jobs (and echo tasks) in the throughput burst")
    parser.add_argument("--samples", type=int, default=100, help="sequential latency samples")
    parser.add_argument("--threads", type=int, default=8, help="client threads submitting the burst")
    parser.add_argument("--slots", type=int, default=8, help="engine slots (= worker threads)")
    parser.add_argument("--api-processes", type=int, default=1, help="TNLLM_API_PROCESSES of the API")
    parser.add_argument("--trace", type=int, default=30, help="sequential jobs traced under MONITOR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tnllm-bench-") as tmp:
        server, children, url, settings = start_services(Path(tmp), args.slots, args.api_processes)
        try:
            echo = bench_echo(settings, args.samples, args.jobs)
            jobs = bench_jobs(url, server.url, args.samples, args.jobs, args.threads)
            trace = trace_jobs(url, server.url, JOB_BODY, args.trace) if args.trace else {}
            local = bench_local(Path(tmp) / "model", args.slots, args.samples, args.jobs)
        finally:
            stop_all(children, 30)
            server.stop()
    result = {"echo_baseline": echo, "jobs": jobs, "trace": trace, "local": local, "args": vars(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        ("echo task: send -> visible (baseline)", echo["latency"]),
        ("job: POST /v1/jobs request", jobs["submit_request"]),
        ("job: submit -> result visible", jobs["latency"]),
        ("job: run time (started -> finished)", jobs["run"]),
        ("job: added by the queue path", jobs["added_by_queue_path"]),
    ]
    print(f"{'latency (sequential)':42} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, s in rows:
        print(f"{name:42} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['mean_ms']:8.2f}")
    burst = args.jobs
    print(f"echo baseline: {echo['send_per_s']:.0f} sends/s, {echo['done_per_s']:.0f} done/s (burst {burst})")
    print(f"jobs: {jobs['submit_per_s']:.0f} submits/s from {args.threads} threads, "
          f"{jobs['done_per_s']:.0f} done/s (burst {jobs['burst_jobs']})")  # fmt: skip
    print(f"done/s vs echo: {jobs['done_per_s'] / echo['done_per_s']:.2f}x; added p50 vs echo round trip: "
          f"{jobs['added_by_queue_path']['p50_ms'] / echo['latency']['p50_ms']:.2f}x")  # fmt: skip
    print_breakdown(result)
    return 0


def print_breakdown(result: dict[str, Any]) -> None:
    """The stage timeline and the round-trip counts."""
    trace = result["trace"]
    if trace:
        print(f"\nstages of a sequential job (MONITOR, {trace['traced_jobs']} jobs)  p50 ms  mean ms")
        for name, s in trace["stages_ms"].items():
            print(f"  {name:60} {s['p50']:7.2f} {s['mean']:7.2f}")
        for role, trips in trace["round_trips_per_job"].items():
            names = ", ".join(f"{k} {v:.1f}" for k, v in trips["by_command"].items())
            print(f"  round trips per job, {role}: {trips['total']:.1f} ({names})")
    for what, key, calls in (("job", "jobs", "redis_calls_per_job"), ("echo task", "echo_baseline",
                             "redis_calls_per_task")):  # fmt: skip
        c = result[key][calls]
        names = ", ".join(f"{k} {v:.1f}" for k, v in list(c["by_command"].items())[:8])
        print(f"Redis commands per {what} (burst, all clients): {c['total']:.1f} ({names})")
    local = result["local"]
    engine = local["engine_latency"]["p50_ms"], local["engine_done_per_s"]
    print(f"prompt count alone: {local['count_us']:.0f} us; engine alone (no queue, 1 token): "
          f"p50 {engine[0]:.2f} ms sequential, {engine[1]:.0f} done/s burst")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
