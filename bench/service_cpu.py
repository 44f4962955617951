"""The full service on CPU with a demo model: many concurrent jobs vs the engine alone.

    python -m bench.service_cpu [--jobs 128] [--max-new-tokens 128] [--size small|tiny] [--slots N]
                                [--json FILE] [--worker-env KEY=VALUE ...]

What the worker process costs beside its engine (the host-side overhead that issue 7 measured on an
H100: 2,194 service vs 5,532 engine-alone tokens/s), on any machine. In one run:
1. a demo checkpoint (``write_demo_checkpoint``; default ``small``, ~30 M parameters, whose decode
   steps take tens of milliseconds on one core, so jobs stream for seconds as on a GPU; ``tiny``
   finishes each job in milliseconds and measures only per-job queue costs) is written to a temp dir;
2. engine alone, in a child process: ``build_engine`` on it (the worker's path, ``--slots`` slots),
   its step loop started as the worker starts it, then ``--jobs`` greedy requests of
   ``--max-new-tokens`` with the service's prompt (the chat template around the same text) all
   submitted at once, each with an ``on_token`` that keeps its deltas; aggregate completion tokens /
   wall time from the first submit to the last result;
3. the service: embedded redis-server, one ``tnllm worker`` (same slots, ``OMP_NUM_THREADS`` as the
   engine child) and ``tnllm api``; ``--jobs`` ``POST /v1/jobs`` at once from client threads, then
   ``GET ?wait=`` each; aggregate = the jobs' completion tokens / wall time from the first submit to
   the last result seen. Also reported: the worker process's and redis-server's CPU seconds
   (user + system) in that window, when the last job started (queue ramp) and the span from the
   first start to the last finish (the part comparable to the engine's wall time).
Greedy decoding on the same prompts makes both phases generate the same tokens (EOS included), so
the two figures are for exactly the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.service_http import (
    collect_results,
    counter_delta,
    engine_counters,
    submit_jobs,
    timeline,
    usage,
    wait_ready,
    warm_up,
)

ROOT = Path(__file__).resolve().parents[1]

PROMPT = "Request {i}: tell me about linear attention and recurrent state."


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(store: Any) -> float:
    """CPU seconds the redis-server used so far (user + system)."""
    info = store.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def engine_phase(
    model: Path, jobs: int, new_tokens: int, slots: int, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """Engine only (no queue, no HTTP); see the module docstring."""
    import torch

    from tnllm.config import Settings
    from tnllm.engine.factory import build_engine
    from tnllm.engine.types import EngineRequest, SamplingParams
    from tnllm.protocol.jobs import GenerationParams
    from tnllm.text.prompt import render_prompt

    torch.set_num_threads(threads)
    settings = Settings(model=str(model), device=device, engine_slots=slots)
    engine = build_engine(settings.engine_config())
    tok = engine.tokenizer

    def prompt_ids(i: int) -> list[int]:
        return render_prompt(tok, GenerationParams(prompt=PROMPT.format(i=i)), settings.system_prompt)

    prompts = [prompt_ids(i) for i in range(jobs)]
    params = SamplingParams(max_new_tokens=new_tokens)
    engine.start()
    # warm-up (first-call costs), as the service's warm-up job
    engine.generate([EngineRequest("warm", prompt_ids(0), SamplingParams(max_new_tokens=4))], timeout=60)
    deltas: list[list[str]] = [[] for _ in range(jobs)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    handles = [
        engine.submit(
            EngineRequest(f"load{i}", prompts[i], params), on_token=lambda ev, i=i: deltas[i].append(ev.text)
        )
        for i in range(jobs)
    ]
    results = [h.result(timeout=3600) for h in handles]
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    engine.stop()
    tokens = sum(r.completion_tokens for r in results)
    assert all("".join(d) == r.text for d, r in zip(deltas, results, strict=True))
    return {
        "jobs": jobs,
        "completion_tokens": tokens,
        "prompt_tokens_per_job": sorted({r.prompt_tokens for r in results}),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "cpu_s": round(cpu, 2),
    }


def service_phase(
    model: Path, work: Path, jobs: int, new_tokens: int, slots: int, threads: int, extra_env: dict[str, str]
) -> dict[str, Any]:
    """Redis + `tnllm worker` + `tnllm api`; ``jobs`` HTTP jobs at once; aggregate completion tokens/s."""

    from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
    from tnllm.config import Settings
    from tnllm.store import JobStore
    from tnllm.store.server import RedisServer, free_port

    server = RedisServer(work / "redis", die_with_parent=True).start()
    port = free_port()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": server.url, "TNLLM_MODEL": str(model), "TNLLM_DEVICE": "cpu",
         "TNLLM_ENGINE_SLOTS": str(slots), "TNLLM_DATA_DIR": str(work / "data"), "TNLLM_LOG_LEVEL": "WARNING",
         "TNLLM_MAX_QUEUED": "100000", "OMP_NUM_THREADS": str(threads), **extra_env},
    )  # fmt: skip
    worker = Child(
        "worker", tnllm_argv("worker", "--hostname", "cpu@bench"), env=env, log_path=work / "worker.log"
    )
    api = Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=work / "api.log")
    children = [worker, api]
    url = f"http://127.0.0.1:{port}"
    res: dict[str, Any] = {}
    store = JobStore.from_settings(Settings(redis_url=server.url))
    try:
        for child in children:
            child.start()
        wait_ready(children, url, store, timeout_s=180, poll_s=0.3)
        warm_up(url)
        bodies = [{"prompt": PROMPT.format(i=i), "max_new_tokens": new_tokens} for i in range(jobs)]
        assert worker.process is not None
        pid = worker.process.pid
        redis_cpu0 = _redis_cpu(store)
        counters0 = engine_counters(store)
        cpu0, t0, wall0 = _cpu_seconds(pid), time.perf_counter(), time.time()
        ids = submit_jobs(url, bodies, threads=16)
        results = collect_results(url, ids)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(pid) - cpu0
        redis_cpu = _redis_cpu(store) - redis_cpu0

        tokens = sum(usage(j, "completion_tokens") for j in results)
        res.update(
            jobs=len(results),
            completion_tokens=tokens,
            prompt_tokens_per_job=sorted({usage(j, "prompt_tokens") for j in results}),
            wall_s=round(wall, 3),
            tokens_per_s=round(tokens / wall, 1),
            worker_cpu_s=round(cpu, 2),
            redis_cpu_s=round(redis_cpu, 2),
            worker_engine=counter_delta(counters0, engine_counters(store)),
            timeline=timeline(results, wall0),
        )
    finally:
        store.client.close()
        stop_all(children, 30)
        server.stop()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=0, help="engine slots (default: --jobs)")
    ap.add_argument("--size", default="small", help="demo model size: small (~30 M parameters) or tiny")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads (both phases)")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the worker and API (e.g. TNLLM_STREAM_FLUSH_INTERVAL=0.1)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--engine-only", type=Path, help=argparse.SUPPRESS)  # child mode: model dir
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)  # child mode (bench.service_multi)
    args = ap.parse_args()
    slots = args.slots or args.jobs
    if args.engine_only:
        result = engine_phase(
            args.engine_only, args.jobs, args.max_new_tokens, slots, args.torch_threads, args.device
        )
        print(json.dumps(result), flush=True)
        return 0
    from tnllm.model.demo import write_demo_checkpoint

    extra = dict(item.split("=", 1) for item in args.worker_env)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "args": {"jobs": args.jobs, "max_new_tokens": args.max_new_tokens, "slots": slots, "size": args.size,
                 "torch_threads": args.torch_threads, "worker_env": extra},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tnllm-svc-cpu-") as tmp:
        work = Path(tmp)
        model = write_demo_checkpoint(work / "model", size=args.size, seed=0)
        cmd = [sys.executable, "-m", "bench.service_cpu", "--engine-only", str(model),
               "--jobs", str(args.jobs),
               "--max-new-tokens", str(args.max_new_tokens), "--slots", str(slots),
               "--torch-threads", str(args.torch_threads)]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        res["engine"] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps({"engine": res["engine"]}), flush=True)
        res["service"] = service_phase(
            model, work, args.jobs, args.max_new_tokens, slots, args.torch_threads, extra
        )
    res["service_over_engine"] = round(res["service"]["tokens_per_s"] / res["engine"]["tokens_per_s"], 3)
    res["same_tokens"] = res["service"]["completion_tokens"] == res["engine"]["completion_tokens"]
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
