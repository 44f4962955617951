"""The full service on one GPU: 256 jobs through API + Redis + Celery worker vs the engine alone.

    python -m bench.service_gpu [--jobs 256] [--max-new-tokens 512] [--workdir DIR] [--json FILE]
    python -m bench.service_gpu --short   # 20,000 short jobs (32-token prompt, 4 new tokens): jobs/s

``--short`` is the short-job mode (``bench/service_gpu_short.py``: jobs/s of the service vs the
engine alone on the same load, submit latency p50/p99); the rest of this text is the default mode.

Needs a CUDA GPU (and fla-core/triton, like bench/gpu.py) plus the service packages. In one run:
1. a random bf16 checkpoint with the real 7B shapes (vocab 64000, bench/gpu.py's CONFIG_7B) is
   written in the official format (three ``pytorch_model-0000k-of-00003.bin`` shards + index) with a
   small sentencepiece tokenizer (the demo's 4096 pieces: ids beyond it decode to no text);
2. engine only, in a child process: ``build_engine`` on that checkpoint (the worker's own path: load,
   tune, capture graphs), then (a) bench/gpu.py's ``engine_decode`` figure at 256 sequences (median
   full-batch step) and (b) the same load as the service — ``--jobs`` greedy requests of
   ``--max-new-tokens`` with a 120-token prompt each (the service's prompt length), all submitted
   at once, stepped until done — aggregate completion tokens / wall time, twice; then the same load
   the worker's way (the engine's own thread, ``engine.start()``), alone and beside 256 threads
   parked like the worker's task threads; every pass reports the engine's counters (steps,
   overlapped steps, host time, GPU time per step from CUDA events) and nvidia-smi's clocks, power
   and throttle reasons sampled during it;
3. the service: embedded redis-server, one ``tnllm worker`` (CUDA, 256 slots; its engine in a child
   process, the default ``TNLLM_ENGINE_PROCESS=true``) on the checkpoint and ``tnllm api``
   (uvicorn); ``--jobs`` ``POST /v1/jobs`` at once from client threads, then ``GET ?wait=`` each;
   aggregate = the jobs' completion tokens (their ``usage``) / wall time from the first submit to
   the last result seen. The API has no ignore-eos: random weights almost never
   emit EOS, and the tokens counted are the ones each job reports. Beside it: the jobs' own
   created/claimed/finished timeline, the worker engine's counters (scraped from its /metrics), its
   progress every 0.25 s (steps, tokens, GPU seconds since the first submit) and the GPU clocks.

``--service-only --env KEY=VALUE`` re-runs step 3 alone on the same --workdir (A/B of a setting, e.g.
``--env TNLLM_ENGINE_PROCESS=false`` for the engine on a thread of the worker;
``--worker-switch-interval`` for the worker's ``sys.setswitchinterval``). Diagnostics:
``--arrival-spread S`` adds an engine-alone pass with the requests arriving over S seconds, as the
service's do; ``--cuda-window S`` records the GPU's kernels for S seconds in the worker and in an
engine-alone pass (bench/worker_probe.py: kernel time vs idle gaps; it runs the engine in the worker
process, ``TNLLM_ENGINE_PROCESS=false``, since the probe records the process it runs in);
``--profile-dir`` (with ``--profile-window``, ``--profile-native``) py-spies the process that runs the
engine (the worker's engine process, or the worker): the GIL holder's stacks and the engine
thread's stack every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.service_http import (
    GpuClocks,
    collect_results,
    counter_delta,
    engine_counters,
    stats_counters,
    submit_jobs,
    timeline,
    usage,
    wait_ready,
    warm_up,
)
from bench.worker_probe import profile_later

ROOT = Path(__file__).resolve().parents[1]

DUMP_S = 0.1  # between py-spy dumps of the engine thread (each takes ~0.1 s more)
PROGRESS_S = 0.25  # as GpuClocks samples
WINDOW_DELAY_S = 3.0  # into the load: all jobs claimed and prefilled, 256 rows decoding
PREFILL_BUDGET = 2048  # as bench/gpu.py's engine; the worker gets the same setting
SHARD_BYTES = 5_000_000_000  # three shards, like the released 7B files
PROMPT_TOKENS = 120  # what the service's chat template makes of the bench prompt (demo tokenizer)


def write_checkpoint(out: Path) -> float:
    """Random 7B-shaped bf16 checkpoint (weights drawn on the GPU: fast) + tokenizer; seconds taken."""
    import torch

    from bench.gpu import CONFIG_7B
    from tnllm.model.checkpoint_io import (
        EMBED_KEY,
        HEAD_KEY,
        expected_shapes,
        save_official_checkpoint,
    )
    from tnllm.model.config import TransnormerConfig
    from tnllm.model.demo import SIZES
    from tnllm.model.demo_tokenizer import write_tokenizer_files
    from tnllm.model.formulas import lrpe_theta_init

    t0 = time.perf_counter()
    raw = {"architectures": ["TransnormerForCausalLM"], "torch_dtype": "bfloat16", **CONFIG_7B}
    config = TransnormerConfig.from_dict(raw, source="service bench 7B config")
    gen = torch.Generator(device="cuda").manual_seed(0)

    def tensors():  # type: ignore[no-untyped-def]
        for name, shape in expected_shapes(config).items():
            if name.endswith("lrpe.theta"):
                t = lrpe_theta_init(shape[0], shape[2]).to(torch.bfloat16)  # as iter_random_tensors
            else:
                g = torch.empty(shape, device="cuda", dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
                if "norm." in name and name.endswith(".weight"):
                    g += 1
                t = g.to(torch.bfloat16).cpu()
            yield name, t
            if name == EMBED_KEY and config.tie_word_embeddings:
                yield HEAD_KEY, t

    save_official_checkpoint(tensors(), config, out, fmt="bin", max_shard_bytes=SHARD_BYTES)
    write_tokenizer_files(out, SIZES["tiny"].vocab_size)
    return time.perf_counter() - t0


def engine_phase(
    ckpt: Path, jobs: int, new_tokens: int, steps: int, cuda_window_s: float = 0.0, spread_s: float = 0.0
) -> dict[str, Any]:
    """Engine only (no queue, no HTTP) on the worker's own build path; see the module docstring."""
    import torch

    from bench.gpu import engine_decode
    from tnllm.config import Settings
    from tnllm.engine.factory import build_engine
    from tnllm.engine.types import SamplingParams

    res: dict[str, Any] = {}
    if not (ckpt / "model.safetensors.index.json").exists() and not any(ckpt.glob("*.bin.index.json")):
        res["checkpoint_write_s"] = round(write_checkpoint(ckpt), 1)
        torch.cuda.empty_cache()
    settings = Settings(model=str(ckpt), device="cuda", engine_slots=256, prefill_token_budget=PREFILL_BUDGET)
    t0 = time.perf_counter()
    engine = build_engine(settings.engine_config())
    res["engine_build_s"] = round(time.perf_counter() - t0, 1)
    res["gpu_py_engine_decode_b256"] = engine_decode(engine, 256, steps)
    print(json.dumps(res), flush=True)
    params = SamplingParams(max_new_tokens=new_tokens)
    # twice: the first pass shows what a fresh engine pays (compiles the warm-up missed), the second
    # the steady figure; each splits wall time into ramp steps (some prompt still prefilling or
    # waiting) and decode-only steps, and counts the overlapped (chained) steps
    for rep in ("same_load", "same_load_again"):
        torch.cuda.synchronize()
        stats0 = engine.stats()
        t0 = time.perf_counter()
        with GpuClocks(ckpt.parent / f"clocks_{rep}.csv") as clocks:
            handles = submit_same_load(engine, rep, jobs, params)
            ramp_s, ramp_steps, decode_s, decode_steps = 0.0, 0, 0.0, 0
            while not all(h.done() for h in handles):
                sched = engine.sched
                ramp = bool(sched.waiting) or any(not s.prefill_done for s in sched.running.values())
                t1 = time.perf_counter()
                engine.step()
                dt = time.perf_counter() - t1
                if ramp:
                    ramp_s, ramp_steps = ramp_s + dt, ramp_steps + 1
                else:
                    decode_s, decode_steps = decode_s + dt, decode_steps + 1
            wall = time.perf_counter() - t0
        tokens = sum(h.result().completion_tokens for h in handles)
        counters = counter_delta(stats_counters(stats0), stats_counters(engine.stats()))
        res[rep] = {"jobs": jobs, "completion_tokens": tokens, "wall_s": round(wall, 3),
                    "tokens_per_s": round(tokens / wall, 1), "ramp_steps": ramp_steps,
                    "ramp_s": round(ramp_s, 3), "decode_steps": decode_steps, "decode_s": round(decode_s, 3),
                    "chained_steps": int(counters["overlapped_steps"]), "gpu_clocks": clocks.summary(),
                    "counters": counters}  # fmt: skip
        print(json.dumps(res[rep]), flush=True)
    # the worker's way of running the same load: the engine's own thread (graphs captured on this
    # thread, replayed from that one), alone and then beside 256 threads parked the way the worker's
    # task threads wait (Event.wait, waking every WAIT_S): splits "how the worker runs the engine"
    # from "what else the service does" when the worker's GPU time per step differs from the above
    # (and, with spread_s, arriving over spread_s seconds as the service's jobs do)
    passes = [("same_load_engine_thread", 0, 0.0), ("same_load_engine_thread_256_waiters", jobs, 0.0)]
    if spread_s > 0:
        passes.append(("same_load_spread", 0, spread_s))
    for rep, waiters, spread in passes:
        with GpuClocks(ckpt.parent / f"clocks_{rep}.csv") as clocks:
            res[rep] = threaded_load(engine, rep, jobs, params, waiters, spread)
        res[rep]["gpu_clocks"] = clocks.summary()
        print(json.dumps({rep: res[rep]}), flush=True)
    if cuda_window_s:
        # the threaded pass again, with the same CUDA window the worker gets in the service phase
        out = ckpt.parent / "cuda_window_engine.json"
        window = profile_later(WINDOW_DELAY_S, cuda_window_s, out)
        res["same_load_engine_thread_profiled"] = threaded_load(engine, "profiled", jobs, params, 0)
        window.join()
        res["same_load_engine_thread_profiled"]["cuda_window"] = json.loads(out.read_text())
        print(json.dumps({"cuda_window_engine": res["same_load_engine_thread_profiled"]}), flush=True)
    return res


def same_load_request(tag: str, i: int, params: Any) -> Any:
    """Request ``i`` of the service's load on the engine directly: a PROMPT_TOKENS prompt."""
    from bench.gpu import prompt
    from tnllm.engine.types import EngineRequest

    return EngineRequest(f"{tag}{i}", prompt(PROMPT_TOKENS, 1000 + i), params)


def submit_same_load(engine: Any, tag: str, jobs: int, params: Any) -> list[Any]:
    """The service's load on the engine directly: ``jobs`` requests, all at once."""
    return [engine.submit(same_load_request(tag, i, params), lambda ev: None) for i in range(jobs)]


def threaded_load(
    engine: Any, tag: str, jobs: int, params: Any, waiters: int, spread_s: float = 0.0
) -> dict[str, Any]:
    """The same-load requests through ``engine.start()`` (its background thread), with ``waiters``
    extra threads each waiting on an event with the worker's ``WAIT_S`` timeout; engine counters.
    ``spread_s`` > 0 submits request i at ``i / jobs * spread_s`` instead of all at once (the
    service's jobs reach the engine over the time their HTTP submission and claim take)."""
    from tnllm.worker.job_runner import WAIT_S

    done = threading.Event()

    def park() -> None:
        while not done.wait(WAIT_S):
            pass

    parked = [threading.Thread(target=park, daemon=True) for _ in range(waiters)]
    for t in parked:
        t.start()
    stats0 = engine.stats()
    engine.start()
    try:
        t0 = time.perf_counter()
        if spread_s > 0:
            handles = []
            for i in range(jobs):
                time.sleep(max(0.0, t0 + spread_s * i / jobs - time.perf_counter()))
                handles.append(engine.submit(same_load_request(tag, i, params), lambda ev: None))
        else:
            handles = submit_same_load(engine, tag, jobs, params)
        tokens = sum(h.result(timeout=600).completion_tokens for h in handles)
        wall = time.perf_counter() - t0
    finally:
        engine.stop()
        done.set()
    counters = counter_delta(stats_counters(stats0), stats_counters(engine.stats()))
    return {"jobs": jobs, "waiters": waiters, "spread_s": spread_s, "completion_tokens": tokens,
            "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "counters": counters}  # fmt: skip


def profile_worker(
    pid: int, out: Path, delay_s: float, seconds: float, t0: float, native: bool = False
) -> None:
    """py-spy on the loaded worker from ``delay_s`` after the first submit for ``seconds``: a sampled
    profile of the GIL holder (``worker_profile.txt``: collapsed stacks, one line per stack with its
    sample count) and, meanwhile, the engine thread's stack every DUMP_S (``engine_stacks.txt``, each
    headed by the seconds since the first submit at ``t0`` and whether it held the GIL), in ``out``.
    ``native``: those dumps pause the worker and show C frames too (a thread waiting for the GIL
    shows ``take_gil``/``gil_scoped_*`` under ``pthread_cond_timedwait``)."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy")
    if spy is None:
        (out / "py-spy-missing.txt").write_text("py-spy is not on PATH\n")
        return
    time.sleep(delay_s)
    # --gil: only the thread holding the GIL, i.e. where the worker's host time goes; sampling every
    # thread of a 256-thread worker at 100 Hz fell seconds behind and blurred the window
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, math.ceil(seconds))),  # whole seconds
           "--rate", "200", "--format", "raw",
           "--gil", "--threads", "--nonblocking", "-o", str(out / "worker_profile.txt")]  # fmt: skip
    with open(out / "py-spy.log", "w") as log:
        recorder = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        end = time.perf_counter() + seconds
        with open(out / "engine_stacks.txt", "w") as stacks:
            while time.perf_counter() < end:
                at = time.perf_counter() - t0
                mode = ["--native"] if native else ["--nonblocking"]
                dump = subprocess.run([spy, "dump", *mode, "--pid", str(pid)], capture_output=True,
                                      text=True, check=False).stdout  # fmt: skip
                stacks.write(f"=== {at:.2f} s\n{engine_stack(dump)}\n")
                time.sleep(DUMP_S)
        recorder.wait()


def engine_stack(dump: str) -> str:
    """The engine thread's part of a ``py-spy dump`` (its header line says active/idle and +gil)."""
    lines = dump.splitlines()
    start = next((i for i, line in enumerate(lines) if '"tnllm-engine"' in line), None)
    if start is None:
        return "(no engine thread)"
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("Thread ")), len(lines))
    return "\n".join(lines[start:stop])


def service_phase(
    ckpt: Path,
    work: Path,
    jobs: int,
    new_tokens: int,
    threads: int,
    device: str = "cuda",
    profile_dir: Path | None = None,
    profile_window: tuple[float, float] = (3.0, 6.0),
    profile_native: bool = False,
    worker_env: dict[str, str] | None = None,
    cuda_window_s: float = 0.0,
    switch_interval_s: float = 0.0,
) -> dict[str, Any]:
    """Redis + `tnllm worker` + `tnllm api`; ``jobs`` HTTP jobs at once; aggregate completion tokens/s."""

    from tnllm.cli.supervisor import Child, child_env, child_pids, stop_all, tnllm_argv
    from tnllm.config import Settings
    from tnllm.store import JobStore
    from tnllm.store.server import RedisServer, free_port

    server = RedisServer(work / "redis", die_with_parent=True).start()
    port = free_port()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": server.url, "TNLLM_MODEL": str(ckpt), "TNLLM_DEVICE": device,
         "TNLLM_ENGINE_SLOTS": "256", "TNLLM_PREFILL_TOKEN_BUDGET": str(PREFILL_BUDGET),
         "TNLLM_DATA_DIR": str(work / "data"), "TNLLM_LOG_LEVEL": "WARNING", "TNLLM_MAX_QUEUED": "100000",
         **(worker_env or {})},
    )  # fmt: skip
    trigger, window_out = work / "cuda_window.trigger", work / "cuda_window_worker.json"
    trigger.unlink(missing_ok=True)
    window_out.unlink(missing_ok=True)
    probes: list[str] = []
    if cuda_window_s:
        env["TNLLM_ENGINE_PROCESS"] = "false"  # the probe records CUDA in its own process
        probes += ["--cuda-window", str(window_out), "--trigger", str(trigger),
                   "--delay", str(WINDOW_DELAY_S), "--seconds", str(cuda_window_s)]  # fmt: skip
    if switch_interval_s:
        probes += ["--switch-interval", str(switch_interval_s)]
    worker_argv = tnllm_argv("worker", "--hostname", "gpu@bench")
    if probes:
        worker_argv = [sys.executable, "-m", "bench.worker_probe", *probes, "--", *worker_argv]
    children = [
        Child("worker", worker_argv, env=env, log_path=work / "worker.log"),
        Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=work / "api.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    res: dict[str, Any] = {}
    try:
        t_start = time.perf_counter()
        for child in children:
            child.start()
        store = JobStore.from_settings(Settings(redis_url=server.url))
        wait_ready(children, url, store, timeout_s=400, poll_s=0.5)
        res["worker_ready_s"] = round(time.perf_counter() - t_start, 1)
        print(json.dumps(res), flush=True)
        warm_up(url)
        bodies = [
            {"prompt": f"Request {i}: tell me about linear attention and recurrent state.",
             "max_new_tokens": new_tokens}
            for i in range(jobs)
        ]  # fmt: skip

        # the worker engine's progress through the run: [s since the first submit, steps, tokens,
        # GPU seconds], every PROGRESS_S (shows when it steps and when it stalls; nvidia-smi's power
        # samples beside it show whether the GPU is busy)
        progress: list[list[float]] = []
        done = threading.Event()

        def sample_progress() -> None:
            while True:
                c = counter_delta(counters0, engine_counters(store))
                progress.append([round(time.perf_counter() - t0, 2), c["steps"], c["generated_tokens"],
                                 round(c["device_busy_seconds"], 3)])  # fmt: skip
                if done.wait(PROGRESS_S):
                    return

        sampler = threading.Thread(target=sample_progress, daemon=True)
        counters0 = engine_counters(store)
        t0_epoch = time.time()
        t0 = time.perf_counter()
        profiler = None
        if profile_dir is not None:
            worker_pid = children[0].process.pid  # type: ignore[union-attr]
            engine_pid = next(iter(child_pids(worker_pid)), worker_pid)  # its engine process, if any
            profiler = threading.Thread(
                target=profile_worker, args=(engine_pid, profile_dir, *profile_window, t0, profile_native)
            )
        sampler.start()
        if profiler is not None:
            profiler.start()
        with GpuClocks(work / "clocks_service.csv") as clocks:
            if cuda_window_s:
                trigger.touch()
            ids = submit_jobs(url, bodies, threads)
            submitted = time.perf_counter() - t0
            results = collect_results(url, ids)
            wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        end = time.monotonic() + 60
        while cuda_window_s and not window_out.exists() and time.monotonic() < end:
            time.sleep(0.2)  # the worker's window may still be summarising
        if profiler is not None:
            profiler.join()

        completion = sum(usage(j, "completion_tokens") for j in results)
        res.update(
            engine_process=env.get("TNLLM_ENGINE_PROCESS", "true"),
            jobs=len(results),
            submit_s=round(submitted, 3),
            wall_s=round(wall, 3),
            completion_tokens=completion,
            prompt_tokens_per_job=sorted({usage(j, "prompt_tokens") for j in results}),
            short_jobs=sum(usage(j, "completion_tokens") < new_tokens for j in results),
            tokens_per_s=round(completion / wall, 1),
            worker_engine=counter_delta(counters0, engine_counters(store)),
            timeline=timeline(results, t0_epoch),
            gpu_clocks=clocks.summary(),
            cuda_window=json.loads(window_out.read_text()) if window_out.exists() else None,
            progress=progress,
        )
    finally:
        stop_all(children, 30)
        server.stop()
        for child in children:
            res.setdefault("log_tails", {})[child.name] = child.log_tail(15)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=60, help="bench/gpu.py engine_decode steps")
    ap.add_argument("--threads", type=int, default=32, help="client threads submitting the jobs")
    ap.add_argument("--workdir", type=Path, help="where the checkpoint and logs go (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile-dir", type=Path, help="py-spy the worker under load; files go here")
    ap.add_argument(
        "--profile-window",
        default="3,6",
        metavar="DELAY,SECONDS",
        help="py-spy from DELAY s after the first submit for SECONDS (default 3,6)",
    )
    ap.add_argument(
        "--worker-switch-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sys.setswitchinterval in the worker (bench/worker_probe.py; Python's default is 0.005)",
    )
    ap.add_argument(
        "--profile-native",
        action="store_true",
        help="the engine-thread dumps pause the worker and include C frames (shows GIL waits)",
    )
    ap.add_argument(
        "--arrival-spread",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="one more engine-alone pass with the requests submitted evenly over SECONDS (as the "
        "service's jobs arrive) instead of all at once",
    )
    ap.add_argument(
        "--cuda-window",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="record the GPU's kernels for SECONDS, 3 s into the load, in the worker and in an extra "
        "engine-alone pass (bench/worker_probe.py): kernel time vs idle gaps, read the same way in both",
    )
    ap.add_argument("--engine-only", type=Path, help=argparse.SUPPRESS)  # child mode: checkpoint dir
    ap.add_argument(
        "--service-only",
        action="store_true",
        help="skip the engine-alone phase (reuses --workdir's checkpoint, else writes one): A/B runs of "
        "service settings",
    )
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of the services"
    )
    ap.add_argument("--short", action="store_true", help="short-job mode (bench/service_gpu_short.py)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="--short: prompt tokens per job")
    ap.add_argument("--api-processes", type=int, default=0, help="--short: TNLLM_API_PROCESSES (0: auto)")
    ap.add_argument("--device", default="cuda", help="--short: cuda, or cpu for a dry run on the demo model")
    args = ap.parse_args()
    if args.short:
        return _short(args)
    if args.engine_only:
        result = engine_phase(
            args.engine_only,
            args.jobs,
            args.max_new_tokens,
            args.steps,
            args.cuda_window,
            args.arrival_spread,
        )
        (args.engine_only.parent / "engine.json").write_text(json.dumps(result))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tnllm-svc-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt7b"
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        # the engine runs in a child so that its GPU memory is free again for the worker
        cmd = [sys.executable, "-m", "bench.service_gpu", "--engine-only", str(ckpt),
               "--jobs", str(args.jobs),
               "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps),
               "--cuda-window", str(args.cuda_window),
               "--arrival-spread", str(args.arrival_spread)]  # fmt: skip
        if not args.service_only:
            subprocess.run(cmd, cwd=ROOT, check=True)
            res["engine"] = json.loads((work / "engine.json").read_text())
            print(json.dumps(res["engine"]), flush=True)
        elif not (ckpt / "config.json").is_file():
            res["checkpoint_write_s"] = round(write_checkpoint(ckpt), 1)
        res["env"] = dict(kv.split("=", 1) for kv in args.env)
        res["service"] = service_phase(
            ckpt,
            work,
            args.jobs,
            args.max_new_tokens,
            args.threads,
            profile_dir=args.profile_dir,
            profile_native=args.profile_native,
            profile_window=tuple(float(x) for x in args.profile_window.split(",")),  # type: ignore[arg-type]
            worker_env=res["env"],
            cuda_window_s=args.cuda_window,
            switch_interval_s=args.worker_switch_interval,
        )
        res["worker_switch_interval"] = args.worker_switch_interval
        if "engine" in res:
            eng = res["engine"]["same_load_again"]["tokens_per_s"]
            res["service_over_engine_same_load"] = round(res["service"]["tokens_per_s"] / eng, 3)
            res["service_over_gpu_py_b256"] = round(
                res["service"]["tokens_per_s"] / res["engine"]["gpu_py_engine_decode_b256"]["tokens_per_s"], 3
            )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


def _short(args: argparse.Namespace) -> int:
    """``--short``: defaults of the short-job load where the long-job ones were left as they are."""
    from bench.service_gpu_short import run_short

    if args.jobs == 256:
        args.jobs = 20_000
    if args.max_new_tokens == 512:
        args.max_new_tokens = 4
    if args.threads == 32:
        args.threads = 64
    keep = args.workdir is not None
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tnllm-short-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        res = run_short(args)
    finally:
        if not keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
