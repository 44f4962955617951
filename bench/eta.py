"""ETA accuracy: on a steady load of queued jobs, how close ``estimated_start_at`` is to the start.

    python -m bench.eta [--jobs 100] [--slots 8] [--size small|tiny] [--warm 15] [--json FILE]

One run: a demo checkpoint, an embedded redis-server and one ``tnllm worker`` (``--slots``). A
steady load: ``--jobs`` jobs are kept queued (a new one queued whenever one starts; each with
``max_new_tokens`` 16..64, seeded, EOS ignored, so a job's work is what its ETA assumes), exactly
as the API queues them (store record + Celery message). After ``--warm`` seconds (the worker's
published per-token time is its last 10 s of throughput), the next ``--jobs`` jobs queued are
measured: each one's ETA is read right after it is queued (``JobStore.eta``: the flow the job object
uses), and once all have started, the error of the estimate relative to the real wait:
``|estimated_start - started_at| / (started_at - queued_at)``. Reported: the share within 25 % (the
target: 90 %), the median and the 90th percentile of that error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PROMPT = "Job {i}: a few words on recurrent states."


def _submit(store: Any, app: Any, i: int, tokens: int) -> str:
    from tnllm.protocol.celery import send_generate
    from tnllm.store import GenerationParams

    job_id = uuid.uuid4().hex
    params = GenerationParams(prompt=PROMPT.format(i=i), max_new_tokens=tokens, ignore_eos=True)
    assert store.create(job_id=job_id, owner="bench", params=params).kind == "created"
    send_generate(app, job_id, 0)
    return job_id


def _steady_load(
    store: Any, app: Any, depth: int, warm_s: float, rng: random.Random
) -> tuple[list[str], list[tuple[float, float | None]], int]:
    """Keep ``depth`` jobs queued; after ``warm_s`` s, the next ``depth`` submitted jobs are measured:
    (queued at, estimated start) each, read right after the submit. Ends when all have started."""
    from tnllm.store import JobStatus, keys

    n = 0
    measured: list[str] = []
    estimates: list[tuple[float, float | None]] = []
    started = now = time.monotonic()
    next_look = 0.0
    while True:
        for _ in range(max(depth - store.queue_depth(), 0)):
            job_id = _submit(store, app, n, rng.randint(16, 64))
            n += 1
            if time.monotonic() - started >= warm_s and len(measured) < depth:
                at = time.time()
                eta = store.eta(job_id)
                measured.append(job_id)
                estimates.append((at, None if eta is None or eta.start_s is None else at + eta.start_s))
        if len(measured) == depth and now >= next_look:  # seldom: the bench must not load the host
            pipe = store.client.pipeline(transaction=False)
            for job_id in measured:
                pipe.hget(keys.job(job_id), "status")
            if JobStatus.QUEUED.value not in pipe.execute():
                return measured, estimates, n
            next_look = now + 1.0
        time.sleep(0.2)
        now = time.monotonic()


def measure(model: Path, work: Path, jobs: int, slots: int, warm_s: float = 15.0) -> dict[str, Any]:
    """The run described in the module docstring."""
    from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
    from tnllm.config import Settings
    from tnllm.protocol.celery import make_celery
    from tnllm.store import JobStore
    from tnllm.store.server import RedisServer

    server = RedisServer(work / "redis", die_with_parent=True).start()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": server.url, "TNLLM_MODEL": str(model), "TNLLM_DEVICE": "cpu",
         "TNLLM_ENGINE_SLOTS": str(slots), "TNLLM_DATA_DIR": str(work / "data"),
         "TNLLM_LOG_LEVEL": "WARNING", "TNLLM_MAX_QUEUED": "100000", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    worker = Child(
        "worker", tnllm_argv("worker", "--hostname", "eta@bench"), env=env, log_path=work / "w.log"
    )
    settings = Settings(redis_url=server.url)
    store, app = JobStore.from_settings(settings), make_celery(settings)
    rng = random.Random(0)
    depth = jobs
    try:
        worker.start()
        while not any(w.model_loaded for w in store.workers()):
            if not worker.alive:
                raise SystemExit(worker.log_tail(40))
            time.sleep(0.2)
        measured, estimates, submitted = _steady_load(store, app, depth, warm_s, rng)
        step_s = max(w.step_time_s for w in store.workers())
        records = [store.get(i) for i in measured]
    finally:
        store.client.close()
        app.close()
        stop_all([worker], 30)
        server.stop()
    errors, bias, waits = [], [], []
    for (queued_at, est), rec in zip(estimates, records, strict=True):
        wait = rec.started_at.timestamp() - queued_at
        waits.append(wait)
        if est is None:
            errors.append(float("inf"))
            continue
        errors.append(abs(est - queued_at - wait) / max(wait, 1e-3))
        bias.append((est - queued_at) / max(wait, 1e-3))  # < 1: the estimate came early
    within = sum(e <= 0.25 for e in errors) / len(errors)
    cuts = statistics.quantiles(errors, n=10)
    return {
        "jobs": jobs,
        "slots": slots,
        "within_25pct": round(within, 3),
        "median_error": round(statistics.median(errors), 3),
        "p90_error": round(cuts[-1], 3),
        "median_real_wait_s": round(statistics.median(waits), 2),
        "median_estimated_over_real_wait": round(statistics.median(bias), 3),
        "published_step_time_s": round(step_s, 4),
        "jobs_submitted": submitted,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--size", default="small", help="demo model size: small or tiny")
    ap.add_argument("--warm", type=float, default=15.0, help="seconds of steady load before measuring")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from tnllm.model.demo import write_demo_checkpoint

    with tempfile.TemporaryDirectory(prefix="tnllm-eta-") as tmp:
        work = Path(tmp)
        model = write_demo_checkpoint(work / "model", args.size)
        res = measure(model, work, args.jobs, args.slots, args.warm)
    res.update(size=args.size, python=sys.version.split()[0])
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
