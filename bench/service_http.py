"""The HTTP side shared by the full-service benchmarks (bench/service_cpu.py, bench/service_gpu.py):
wait for the stack, submit the jobs, collect their results."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def wait_ready(children: list[Any], url: str, store: Any, timeout_s: float, poll_s: float) -> None:
    """Until ``/readyz`` answers 200 and a worker has published its heartbeat; exits if a child dies."""
    import httpx
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        dead = [c for c in children if not c.alive]
        if dead:
            raise SystemExit(f"{dead[0].name} exited:\n{dead[0].log_tail(40)}")
        if time.monotonic() > deadline:
            raise SystemExit("services did not become ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 and store.workers():
                return
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(poll_s)


def warm_up(url: str) -> None:
    """One short job end to end, so first-request costs stay out of the measurement."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        warm = http.post("/v1/jobs", json={"prompt": "warm up", "max_new_tokens": 4}).json()
        assert http.get(f"/v1/jobs/{warm['id']}", params={"wait": 30}).json()["status"] == "succeeded"


def submit_jobs(url: str, bodies: list[dict[str, Any]], threads: int) -> list[str]:
    """``POST /v1/jobs`` every body from ``threads`` threads; the job ids, in order.

    The threads share one keep-alive client, as a real client would hold: a new httpx.Client per
    request builds an SSL context each time, and that (not the service) capped the submit rate at
    ~40-70 jobs/s in the first runs (docs/PERFORMANCE.md)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=threads)) as client:

        def submit(body: dict[str, Any]) -> str:
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(submit, bodies))


def collect_results(url: str, ids: list[str]) -> list[dict[str, Any]]:
    """Each job object once it is terminal (``?wait=`` long polls); every job must have succeeded."""
    import httpx

    results: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=300) as http:
        for job_id in ids:
            job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            while job.get("status") in ("queued", "running"):
                job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            assert job.get("status") == "succeeded", job
            results.append(job)
    return results


def usage(job: dict[str, Any], key: str) -> int:
    """A token count from a job object's ``usage``."""
    u = job.get("usage") or (job.get("result") or {}).get("usage") or {}
    return int(u.get(key, 0))


def timeline(results: list[dict[str, Any]], t0_epoch: float) -> dict[str, float]:
    """Where a run's wall time went, from the jobs' own timestamps, in seconds after ``t0_epoch``
    (the first submit): when the jobs were created, claimed by a worker (``started_at``) and finished.

    ``claim_lag`` is started - created per job; a service that keeps up with its submitter shows the
    last start shortly after the last create, and the last finish shortly after the engine's own run."""
    from datetime import datetime

    def at(job: dict[str, Any], key: str) -> float:
        return datetime.fromisoformat(str(job[key]).replace("Z", "+00:00")).timestamp() - t0_epoch

    created = sorted(at(j, "created_at") for j in results)
    started = sorted(at(j, "started_at") for j in results)
    finished = sorted(at(j, "finished_at") for j in results)
    lag = sorted(at(j, "started_at") - at(j, "created_at") for j in results)

    def pct(xs: list[float], q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)

    return {
        "last_created": pct(created, 1.0),
        "first_started": pct(started, 0.0),
        "last_started": pct(started, 1.0),
        "claim_lag_p50": pct(lag, 0.5),
        "claim_lag_max": pct(lag, 1.0),
        "first_finished": pct(finished, 0.0),
        "finished_p50": pct(finished, 0.5),
        "last_finished": pct(finished, 1.0),
    }


ENGINE_COUNTERS = (
    "steps",
    "overlapped_steps",
    "busy_seconds",
    "device_wait_seconds",
    "device_busy_seconds",
    "generated_tokens",
)


def engine_counters(store: Any) -> dict[str, float]:
    """The worker engine's step counters, scraped from its Prometheus endpoint (port from the
    heartbeat): steps, overlapped (chained) steps, seconds spent in steps, generated tokens."""
    import httpx

    worker = store.workers()[0]
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in ENGINE_COUNTERS:
            if line.startswith(f"tnllm_engine_{name}_total "):
                found[name] = float(line.split()[-1])
    return found


def stats_counters(stats: Any) -> dict[str, float]:
    """The same counters from an ``EngineStats`` of an engine in this process."""
    return {k: float(getattr(stats, k)) for k in ENGINE_COUNTERS}


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the engine did between two ``engine_counters`` scrapes, with the mean step time."""
    d = {k: round(after[k] - before[k], 3) for k in ENGINE_COUNTERS}
    d["ms_per_step"] = round(1e3 * d["busy_seconds"] / max(d["steps"], 1), 2)
    d["gpu_ms_per_step"] = round(1e3 * d["device_busy_seconds"] / max(d["steps"], 1), 2)
    d["host_ms_per_step"] = round(
        1e3 * (d["busy_seconds"] - d["device_wait_seconds"]) / max(d["steps"], 1), 2
    )
    return d


class GpuClocks:
    """``nvidia-smi`` sampled every 250 ms while the block runs: SM/memory clocks, power, temperature
    and the active clock-event (throttle) reasons, summarised by ``summary()``. Without nvidia-smi the
    summary is empty: the bench still runs."""

    FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "clocks_event_reasons.active")

    def __init__(self, path: Any) -> None:
        self.path = path
        self._proc: Any = None

    def __enter__(self) -> GpuClocks:
        import shutil
        import subprocess

        smi = shutil.which("nvidia-smi")
        if smi is not None:
            query = [smi, f"--query-gpu={','.join(self.FIELDS)}", "--format=csv,noheader,nounits", "-i", "0"]
            if subprocess.run(query, capture_output=True, check=False).returncode == 0:
                self._out = open(self.path, "w")  # closed in __exit__
                self._proc = subprocess.Popen([*query, "-lms", "250"], stdout=self._out)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._out.close()

    def summary(self) -> dict[str, Any]:
        """Median and extremes of the samples; {} when nothing was sampled."""
        rows: list[list[float]] = []  # sm MHz, mem MHz, W, °C
        reasons: set[str] = set()
        if self._proc is not None:
            for line in Path(self.path).read_text().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == len(self.FIELDS):
                    try:
                        rows.append([float(p) for p in parts[:4]])
                    except ValueError:
                        continue
                    reasons.add(parts[4])
        if not rows:
            return {}

        def col(i: int) -> list[float]:
            return sorted(r[i] for r in rows)

        return {
            "samples": len(rows),
            "sm_mhz_median": col(0)[len(rows) // 2],
            "sm_mhz_min": col(0)[0],
            "mem_mhz_median": col(1)[len(rows) // 2],
            "power_w_median": col(2)[len(rows) // 2],
            "power_w_max": col(2)[-1],
            "temp_c_max": col(3)[-1],
            "event_reasons": sorted(reasons),
        }
