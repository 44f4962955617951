"""Scale-out: N workers (one per GPU) against one Redis and one API, vs one card's engine alone.

    python -m bench.service_multi [--workers 2] [--device cuda|cpu] [--jobs-per-worker 256]
                                  [--max-new-tokens 512] [--kill] [--workdir DIR] [--json FILE]

The recipe README and docs/DEPLOYMENT.md promise (`tnllm up --workers N` pins worker i to GPU i), run
as `tnllm up` runs it: one embedded redis-server, N ``tnllm worker`` processes whose environments come
from ``tnllm.cli.gpus.worker_env`` (the launcher's own pinning), one ``tnllm api``. In one run:
1. engine alone on ONE card (a child process, ``CUDA_VISIBLE_DEVICES`` = the first GPU): the load one
   worker gets (``--jobs-per-worker`` greedy requests of ``--max-new-tokens``), aggregate tokens/s;
2. the service with ``--workers`` workers and ``--workers × --jobs-per-worker`` jobs submitted at
   once over HTTP; aggregate completion tokens / wall time; which worker finished each job (the job
   record's lease owner); each worker's ``CUDA_VISIBLE_DEVICES`` (read from /proc) and, on CUDA,
   which GPU each worker's processes run on (``nvidia-smi --query-compute-apps``) and every GPU's
   utilisation sampled during the load;
3. with ``--kill``: the same service, long jobs, worker 0 SIGKILLed once it runs some of them; every
   job must still succeed exactly once (status, attempts, lease owner), the killed worker's jobs on
   the other worker.
``--device cpu`` runs the same plumbing on a demo checkpoint (one "card" per worker, no pinning):
it checks the recipe on any machine; the figures that matter come from a multi-GPU host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.service_cpu import PROMPT
from bench.service_http import collect_results, submit_jobs, usage, wait_ready, warm_up

ROOT = Path(__file__).resolve().parents[1]


class GpuUtil:
    """``nvidia-smi`` utilisation of every GPU, sampled every 250 ms while the block runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GpuUtil:
        smi = shutil.which("nvidia-smi")
        if smi is not None:
            self._out = open(self.path, "w")  # closed in __exit__
            query = "--query-gpu=index,utilization.gpu,memory.used"
            self._proc = subprocess.Popen(
                [smi, query, "--format=csv,noheader,nounits", "-lms", "250"], stdout=self._out
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._out.close()

    def summary(self) -> dict[str, Any]:
        """Per GPU: samples, median and share of samples above 50 % utilisation."""
        per: dict[str, list[float]] = {}
        if self._proc is not None:
            for line in self.path.read_text().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 3 and parts[1].replace(".", "").isdigit():
                    per.setdefault(parts[0], []).append(float(parts[1]))
        return {
            gpu: {"samples": len(xs), "median_util": sorted(xs)[len(xs) // 2], "busy_share": round(
                sum(x > 50 for x in xs) / len(xs), 3)}
            for gpu, xs in per.items() if xs
        }  # fmt: skip


def gpu_of_pids() -> dict[int, str]:
    """pid → GPU uuid of every compute process (empty without nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    out = subprocess.run(
        [smi, "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout
    pairs = (line.split(",") for line in out.splitlines() if "," in line)
    return {int(pid): uuid.strip() for pid, uuid in pairs}


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the worker and its engine child)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def visible_devices(pid: int) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` a process was started with (None when unset)."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return item.split(b"=", 1)[1].decode()
    return None


class Service:
    """redis-server + N workers (pinned as `tnllm up` pins them) + one API, started and stopped."""

    def __init__(self, work: Path, model: Path, device: str, workers: int, slots: int) -> None:
        from tnllm.cli.gpus import visible_gpus, worker_env
        from tnllm.cli.supervisor import Child, child_env, tnllm_argv
        from tnllm.store.server import RedisServer, free_port

        self.server = RedisServer(work / "redis", die_with_parent=True).start()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = child_env(os.environ, {
            "TNLLM_REDIS_URL": self.server.url, "TNLLM_MODEL": str(model), "TNLLM_DEVICE": device,
            "TNLLM_ENGINE_SLOTS": str(slots), "TNLLM_DATA_DIR": str(work / "data"),
            "TNLLM_LOG_LEVEL": "WARNING", "TNLLM_MAX_QUEUED": "1000000", "TNLLM_LEASE_TTL": "5",
            "TNLLM_LEASE_RENEW_INTERVAL": "1", "TNLLM_REAPER_INTERVAL": "1"})  # fmt: skip
        gpus = visible_gpus(os.environ)
        self.workers = [
            Child(f"worker{i}", tnllm_argv("worker", "--hostname", f"w{i}@bench"),
                  env=worker_env(i, env, device, gpus), log_path=work / f"worker{i}.log")
            for i in range(workers)
        ]  # fmt: skip
        self.api = Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=work / "api.log")

    def __enter__(self) -> Service:
        from tnllm.config import Settings
        from tnllm.store import JobStore

        for child in [*self.workers, self.api]:
            child.start()
        self.store = JobStore.from_settings(Settings(redis_url=self.server.url))
        wait_ready([*self.workers, self.api], self.url, self.store, timeout_s=600, poll_s=0.5)
        deadline = time.monotonic() + 600
        while sum(w.model_loaded for w in self.store.workers()) < len(self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("not every worker became ready")
            time.sleep(0.5)
        warm_up(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        from tnllm.cli.supervisor import stop_all

        self.store.client.close()
        stop_all([*self.workers, self.api], 60)
        self.server.stop()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    def owners(self, ids: list[str]) -> list[str]:
        """Which worker finished each job (the record's lease owner)."""
        return [(rec.lease_owner or "").split(":")[0] if (rec := self.store.get(i)) else "" for i in ids]


def bodies(n: int, new_tokens: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": PROMPT.format(i=offset + i), "max_new_tokens": new_tokens} for i in range(n)]


def load_phase(svc: Service, work: Path, jobs: int, new_tokens: int) -> dict[str, Any]:
    """All jobs at once; aggregate tokens/s, the spread over workers, pinning and GPU use."""
    pinning = {f"worker{i}": visible_devices(pid) for i, pid in enumerate(svc.pids())}
    with GpuUtil(work / "gpu_util.csv") as util:
        t0 = time.perf_counter()
        ids = submit_jobs(svc.url, bodies(jobs, new_tokens), threads=32)
        on_gpu = gpu_of_pids()  # sampled while the load runs: every engine is on its card by now
        results = collect_results(svc.url, ids)
        wall = time.perf_counter() - t0
    tokens = sum(usage(j, "completion_tokens") for j in results)
    gpus_of = {
        f"worker{i}": sorted({on_gpu[p] for p in descendants(pid) if p in on_gpu})
        for i, pid in enumerate(svc.pids())
    }
    return {
        "jobs": len(results), "succeeded": sum(j["status"] == "succeeded" for j in results),
        "completion_tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
        "jobs_per_worker": dict(Counter(svc.owners(ids))), "cuda_visible_devices": pinning,
        "gpus_of_worker_processes": gpus_of, "gpu_util": util.summary(),
    }  # fmt: skip


def kill_phase(svc: Service, jobs: int, new_tokens: int) -> dict[str, Any]:
    """Long jobs; SIGKILL worker 0 while it runs some; every job must succeed exactly once."""
    ids = submit_jobs(svc.url, bodies(jobs, new_tokens, offset=10_000), threads=16)
    victim = svc.workers[0]
    deadline = time.monotonic() + 300
    while True:
        recs = [r for i in ids if (r := svc.store.get(i)) and r.status == "running"]
        running = [r for r in recs if (r.lease_owner or "").startswith("w0@bench:")]
        if len(running) >= 2:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("worker 0 never ran two of the kill phase's jobs at once")
        time.sleep(0.02)
    held = [r.id for r in running]
    assert victim.process is not None
    os.kill(victim.process.pid, signal.SIGKILL)
    results = collect_results(svc.url, ids)
    records = [svc.store.get(i) for i in ids]
    return {
        "jobs": len(ids), "killed_while_running": len(held),
        "succeeded": sum(j["status"] == "succeeded" for j in results),
        "lost": sum(j["status"] != "succeeded" for j in results),
        "attempts": dict(Counter(r.attempt for r in records if r)),
        "killed_jobs_finished_by": dict(Counter(svc.owners(held))),
    }  # fmt: skip


def engine_alone(model: Path, device: str, jobs: int, new_tokens: int, slots: int) -> dict[str, Any]:
    """One card's engine on one worker's share of the load (a child process pinned to GPU 0)."""
    from tnllm.cli.gpus import visible_gpus, worker_env

    env = worker_env(0, os.environ, device, visible_gpus(os.environ))
    cmd = [sys.executable, "-m", "bench.service_cpu", "--engine-only", str(model), "--device", device,
           "--jobs", str(jobs), "--max-new-tokens", str(new_tokens), "--slots", str(slots)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def checkpoint(work: Path, device: str) -> Path:
    """7B-shaped random weights on CUDA (bench.service_gpu's), the small demo model on CPU."""
    if device == "cuda":
        from bench.service_gpu import write_checkpoint

        write_checkpoint(work / "ckpt")
        return work / "ckpt"
    from tnllm.model.demo import write_demo_checkpoint

    return write_demo_checkpoint(work / "model", size="small", seed=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--jobs-per-worker", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--slots", type=int, default=0, help="slots per worker (default: --jobs-per-worker)")
    ap.add_argument("--kill", action="store_true", help="also run the worker-kill phase")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    slots = args.slots or args.jobs_per_worker
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args) | {
        "workdir": str(args.workdir), "json": str(args.json)}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tnllm-multi-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = checkpoint(work, args.device)
        res["engine_one_card"] = engine_alone(
            model, args.device, args.jobs_per_worker, args.max_new_tokens, slots
        )
        print(json.dumps({"engine_one_card": res["engine_one_card"]}), flush=True)
        with Service(work, model, args.device, args.workers, slots) as svc:
            res["service"] = load_phase(svc, work, args.workers * args.jobs_per_worker, args.max_new_tokens)
            print(json.dumps({"service": res["service"]}), flush=True)
            if args.kill:
                res["kill"] = kill_phase(svc, 4 * args.workers, 4 * args.max_new_tokens)
    res["service_over_one_engine"] = round(
        res["service"]["tokens_per_s"] / res["engine_one_card"]["tokens_per_s"], 3
    )
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
