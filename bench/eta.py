"""ETA accuracy: on a steady load of queued jobs, how close ``estimated_start_at`` is to the start.

    python -m bench.eta [--jobs 100] [--slots 8] [--size small|tiny] [--json FILE]

One run: a demo checkpoint, an embedded redis-server and one ``tnllm worker`` (``--slots``). A
warm-up load of ``--slots`` x 2 jobs makes the engine busy (its step time is measured under load
and published in the heartbeat); then ``--jobs`` jobs (``max_new_tokens`` 16..64, seeded, EOS
ignored, so each job's work is what its ETA assumes) are queued at once, exactly as the API queues
them (store record + Celery message). Right after, each job's ETA is read (``JobStore.eta``: the
same flow the job object uses). At the end, for every job, the error of the estimate relative to
its real wait: ``|estimated_start - started_at| / (started_at - queued_at)``. Reported: the share
within 25 % (the target: 90 %), the median and the 90th percentile of that error.
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


def _wait_all(store: Any, ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        records = [store.get(i) for i in ids]
        if all(r is not None and r.terminal for r in records):
            return records
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish")
        time.sleep(0.2)


def measure(model: Path, work: Path, jobs: int, slots: int) -> dict[str, Any]:
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
    try:
        worker.start()
        while not any(w.model_loaded for w in store.workers()):
            if not worker.alive:
                raise SystemExit(worker.log_tail(40))
            time.sleep(0.2)
        warm = [_submit(store, app, i, 64) for i in range(2 * slots)]
        while not any(w.step_time_s > 0 for w in store.workers()) or store.queue_depth() > slots:
            time.sleep(0.1)
        queued_at = time.time()
        ids = [_submit(store, app, i, rng.randint(16, 64)) for i in range(jobs)]
        estimates = []
        for job_id in ids:
            read_at = time.time()
            eta = store.eta(job_id)
            estimates.append(None if eta is None or eta.start_s is None else read_at + eta.start_s)
        records = _wait_all(store, warm + ids, timeout=3600)[len(warm) :]
    finally:
        store.client.close()
        app.close()
        stop_all([worker], 30)
        server.stop()
    errors = []
    for est, rec in zip(estimates, records, strict=True):
        started = rec.started_at.timestamp()
        if est is None:
            errors.append(float("inf"))
            continue
        errors.append(abs(est - started) / max(started - queued_at, 1e-3))
    within = sum(e <= 0.25 for e in errors) / len(errors)
    cuts = statistics.quantiles(errors, n=10)
    return {
        "jobs": jobs,
        "slots": slots,
        "within_25pct": round(within, 3),
        "median_error": round(statistics.median(errors), 3),
        "p90_error": round(cuts[-1], 3),
        "last_start_s": round(max(r.started_at.timestamp() for r in records) - queued_at, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--size", default="small", help="demo model size: small or tiny")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from tnllm.model.demo import write_demo_checkpoint

    with tempfile.TemporaryDirectory(prefix="tnllm-eta-") as tmp:
        work = Path(tmp)
        model = write_demo_checkpoint(work / "model", args.size)
        res = measure(model, work, args.jobs, args.slots)
    res.update(size=args.size, python=sys.version.split()[0])
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
