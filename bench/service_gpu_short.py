"""Short jobs through the full service vs the engine alone (``python -m bench.service_gpu --short``).

    python -m bench.service_gpu --short [--jobs 20000] [--prompt-tokens 32] [--max-new-tokens 4]
        [--threads 64] [--api-processes 0] [--device cuda|cpu] [--workdir DIR] [--json FILE]

The load of classification / routing / scoring traffic: ``--jobs`` jobs of a ``--prompt-tokens``
prompt (as the service counts it: chat template included) and ``--max-new-tokens`` new tokens each
(``ignore_eos``, so every job makes exactly that many; no default system message, so the prompt is
the job's own text in the chat template), in one run:

1. engine alone, in a child process (its GPU memory is free again for the worker): ``build_engine``
   on the checkpoint (the worker's path), 256 slots, the jobs' exact prompt token ids, all submitted
   at once to the engine's own thread (``engine.start()``, the worker's way); jobs/s = jobs / wall
   time, twice (the first pass pays what warm-up missed);
2. the service: redis-server, one ``tnllm worker`` (256 slots) and ``tnllm api``
   (``TNLLM_API_PROCESSES``); the jobs are POSTed by ``--threads`` concurrent clients (one
   keep-alive connection each) with every request's latency recorded; jobs/s = jobs / (first submit
   -> last ``finished_at``), read from the records once every job is terminal, so collecting the
   results costs the figure nothing;
3. ``service_over_engine`` = service jobs/s / engine jobs/s (the second pass).

``--device cuda`` (default) writes a random bf16 checkpoint with the real 7B shapes
(``bench.service_gpu.write_checkpoint``); ``--device cpu`` runs the same on the tiny demo model, a
dry run of the harness (use a few hundred jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

#: Engine slots of both phases (the worker's ``TNLLM_ENGINE_SLOTS``).
SLOTS = 256


def checkpoint(work: Path, device: str) -> Path:
    """The 7B-shaped checkpoint (cuda) or the tiny demo model (cpu), written once per workdir."""
    if device == "cpu":
        from tnllm.model.demo import write_demo_checkpoint

        out = work / "demo-tiny"
        return out if (out / "config.json").is_file() else write_demo_checkpoint(out, size="tiny", seed=0)
    from bench.service_gpu import write_checkpoint

    out = work / "ckpt7b"
    if not (out / "config.json").is_file():
        write_checkpoint(out)
    return out


def fit_prompt(ckpt: Path, tokens: int) -> tuple[str, list[int]]:
    """A prompt text the service counts as ``tokens`` tokens (chat template included, as the API's
    counter and the worker render it) and those token ids; the shortest text when the template
    alone is longer (the demo tokenizer's makes 39 tokens of "a"): the report gives the real count."""
    from tnllm.config import Settings
    from tnllm.store import GenerationParams
    from tnllm.text.prompt import render_prompt
    from tnllm.text.tokenizer import load_tokenizer

    settings = Settings(model=str(ckpt), system_prompt="")  # as the service runs (SERVICE_ENV)
    tok = load_tokenizer(ckpt, settings)
    words: list[str] = []
    while True:
        text = " ".join(words) or "a"
        ids = render_prompt(tok, GenerationParams(prompt=text), settings.system_prompt)
        if len(ids) >= tokens or len(words) > 4 * tokens:
            return text, ids
        words.append(f"label{len(words) % 10}")


def engine_alone(ckpt: Path, device: str, jobs: int, ids: list[int], new_tokens: int) -> dict[str, Any]:
    """``jobs`` requests of ``ids`` through the engine's own thread, all at once; jobs/s, twice."""
    from tnllm.config import Settings
    from tnllm.engine.factory import build_engine
    from tnllm.engine.types import EngineRequest, SamplingParams

    settings = Settings(model=str(ckpt), device=device, engine_slots=SLOTS, prefill_token_budget=2048)
    engine = build_engine(settings.engine_config())
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    res: dict[str, Any] = {}
    for rep in ("first", "again"):
        engine.start()
        try:
            t0 = time.perf_counter()
            handles = [
                engine.submit(EngineRequest(f"{rep}{i}", ids, params), lambda ev: None) for i in range(jobs)
            ]
            tokens = sum(h.result(timeout=3600).completion_tokens for h in handles)
            wall = time.perf_counter() - t0
        finally:
            engine.stop()
        res[rep] = {"jobs": jobs, "completion_tokens": tokens, "wall_s": round(wall, 3),
                    "jobs_per_s": round(jobs / wall, 1)}  # fmt: skip
        print(json.dumps({f"engine_{rep}": res[rep]}), flush=True)
    return res


def submit_timed(url: str, bodies: list[dict[str, Any]], threads: int) -> tuple[list[str], list[float]]:
    """POST every body from ``threads`` clients (a keep-alive connection each); ids and latencies."""
    import httpx

    ids: list[str] = [""] * len(bodies)
    latencies: list[float] = [0.0] * len(bodies)
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = http.post("/v1/jobs", json=bodies[i])
                latencies[i] = time.perf_counter() - t0
                assert r.status_code == 202, r.text
                ids[i] = r.json()["id"]

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return ids, latencies


def pct_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))], 2)


def service(ckpt: Path, work: Path, device: str, text: str, args: Any) -> dict[str, Any]:
    """Redis + worker + API; the jobs from concurrent clients; jobs/s from the records."""
    from bench.service_http import wait_ready, warm_up
    from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
    from tnllm.config import Settings
    from tnllm.store import JobStore
    from tnllm.store.server import RedisServer, free_port

    server = RedisServer(work / "redis", die_with_parent=True).start()
    port = free_port()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": server.url, "TNLLM_MODEL": str(ckpt), "TNLLM_DEVICE": device,
         "TNLLM_ENGINE_SLOTS": str(SLOTS), "TNLLM_PREFILL_TOKEN_BUDGET": "2048",
         "TNLLM_DATA_DIR": str(work / "data"), "TNLLM_LOG_LEVEL": "WARNING",
         "TNLLM_MAX_QUEUED": str(args.jobs + 1000), "TNLLM_API_PROCESSES": str(args.api_processes),
         "TNLLM_SYSTEM_PROMPT": "",
         **dict(kv.split("=", 1) for kv in args.env)},
    )  # fmt: skip
    children = [
        Child(
            "worker", tnllm_argv("worker", "--hostname", "gpu@bench"), env=env, log_path=work / "worker.log"
        ),
        Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=work / "api.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        for child in children:
            child.start()
        store = JobStore.from_settings(Settings(redis_url=server.url))
        wait_ready(children, url, store, timeout_s=400, poll_s=0.5)
        warm_up(url)
        body = {"prompt": text, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
        t0_epoch = time.time()
        ids, latencies = submit_timed(url, [body] * args.jobs, args.threads)
        submit_s = time.time() - t0_epoch
        records = _wait_terminal(store, ids)
        finished: datetime = max(r.finished_at for r in records if r.finished_at is not None)
        wall = finished.timestamp() - t0_epoch
        bad = [r.status.value for r in records if r.status.value != "succeeded"]
        return {"jobs": len(ids), "failed": len(bad), "submit_s": round(submit_s, 3),
                "submits_per_s": round(len(ids) / submit_s, 1), "wall_s": round(wall, 3),
                "jobs_per_s": round(len(ids) / wall, 1), "submit_latency_p50_ms": pct_ms(latencies, 50),
                "submit_latency_p99_ms": pct_ms(latencies, 99),
                "api_processes": args.api_processes}  # fmt: skip
    finally:
        stop_all(children, 30)
        server.stop()


def _records(store: Any, ids: list[str]) -> list[Any]:
    """The records of ``ids`` in one pipelined round trip."""
    from tnllm.store import keys
    from tnllm.store.codec import record_from_hash

    pipe = store.client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
    return [record_from_hash(h) for h in pipe.execute()]


def _wait_terminal(store: Any, ids: list[str], timeout_s: float = 3600) -> list[Any]:
    """Every job's record once all are terminal (polled in pipelined batches)."""
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    done: list[Any] = []
    while pending and time.monotonic() < deadline:
        still = []
        for start in range(0, len(pending), 1000):
            batch = pending[start : start + 1000]
            for job_id, record in zip(batch, _records(store, batch), strict=True):
                (done.append(record) if record is not None and record.terminal else still.append(job_id))
        pending = still
        if pending:
            time.sleep(0.5)
    if pending:
        raise SystemExit(f"{len(pending)} jobs not finished after {timeout_s} s")
    return done


def run_short(args: Any) -> dict[str, Any]:
    """The whole short-job run; the result dict (also printed / written by ``bench.service_gpu``)."""
    work: Path = args.workdir
    ckpt = checkpoint(work, args.device)
    text, ids = fit_prompt(ckpt, args.prompt_tokens)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
                           "prompt_tokens": len(ids), "max_new_tokens": args.max_new_tokens}  # fmt: skip
    if not args.service_only:
        cmd = [sys.executable, "-m", "bench.service_gpu_short", str(ckpt), args.device, str(args.jobs),
               str(args.max_new_tokens), json.dumps(ids), str(work / "engine_short.json")]  # fmt: skip
        subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], check=True)
        res["engine"] = json.loads((work / "engine_short.json").read_text())
    res["service"] = service(ckpt, work, args.device, text, args)
    if "engine" in res:
        res["service_over_engine"] = round(
            res["service"]["jobs_per_s"] / res["engine"]["again"]["jobs_per_s"], 3
        )
    return res


if __name__ == "__main__":  # the engine-alone child: ckpt device jobs new_tokens ids_json out
    ckpt_arg, device_arg, jobs_arg, new_arg, ids_arg, out_arg = sys.argv[1:7]
    result = engine_alone(Path(ckpt_arg), device_arg, int(jobs_arg), json.loads(ids_arg), int(new_arg))
    Path(out_arg).write_text(json.dumps(result))
