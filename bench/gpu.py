"""TransNormerLLM-7B on one GPU: the CUDA fast path against its floors and the HF-generate baseline.

    python bench/gpu.py [--micro] [--skip-baseline] [--json out.json]

Random bf16 weights with the real 7B shapes (MODEL_SPEC §2.1), built directly on the GPU, so no
checkpoint is needed. Reports (medians; wall-clock figures include the one host sync per step that
hands token ids out):
- copy bandwidth and the floors derived from it (weights at batch 1; weights + state round trip at
  batch 64/256);
- batch-1 decode tokens/s and ms/step; aggregate decode tokens/s at 64 and 256 sequences;
- time to first token for a 2,048-token prompt on an idle model; decode step at 1k vs 32k context;
- baseline: HF ``generate`` with our model class (worker/model/hf.py), one request at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_micro import copy_bandwidth, run_all, time_events

CFG_7B = dict(d_model=4096, n_layers=30, n_heads=32, d_ffn=11008, vocab=64000)


def env_info() -> dict:
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["fla_core"] = version("fla-core")
        info["transformers"] = version("transformers")
    except Exception:
        pass
    try:
        q = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem"
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except Exception:
        pass
    return info


def build_fast(state_dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    from worker.model.kernels.fastpath import FastTransnormer

    return FastTransnormer.random(**CFG_7B, device="cuda", dtype=torch.bfloat16, std=0.02)


def decode_loop(runner, ids: list[int], pos: list[int], slots: list[int], steps: int) -> float:  # type: ignore[no-untyped-def]
    """Engine-like loop: stage inputs, replay, hand the token ids to the host. Returns s/step."""
    batch = len(ids)
    bs = runner.bucket(batch)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.load_inputs(ids, pos, slots, bs)
        _, top = runner.replay(batch)
        ids = top.tolist()  # the one host sync per step
        pos = [p + 1 for p in pos]
    return (time.perf_counter() - t0) / steps


def prefill_all(fast, pool, slots: list[int], prompt_len: int, start: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    g = torch.Generator(device="cuda").manual_seed(1)
    first = []
    for s in slots:
        ids = torch.randint(3, CFG_7B["vocab"], (prompt_len,), device="cuda", generator=g)
        first.append(fast.prefill(ids, start, pool, s).argmax())
    return torch.stack(first).tolist()


def bench_decode(fast, pool, runner, res: dict, steps: int) -> None:  # type: ignore[no-untyped-def]
    for batch in (1, 64, 256):
        slots = list(range(batch))
        ids = prefill_all(fast, pool, slots, 64)
        pos = [64] * batch
        s_step = decode_loop(runner, ids, pos, slots, steps)
        runner.load_inputs(ids, pos, slots, runner.bucket(batch))
        gpu_ms = time_events(lambda b=batch: runner.replay(b), iters=30, warmup=3)
        res[f"decode_b{batch}"] = {
            "ms_per_step": round(s_step * 1e3, 3),
            "graph_ms": round(gpu_ms, 3),
            "tokens_per_s": round(batch / s_step, 1),
        }
        for p in pool:
            p[:batch].zero_()


def bench_ttft(fast, pool, res: dict, n: int = 2048) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator(device="cuda").manual_seed(2)
    times = []
    for _ in range(6):
        ids_host = torch.randint(3, CFG_7B["vocab"], (n,), generator=torch.Generator().manual_seed(3))
        for p in pool:
            p[0].zero_()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids = ids_host.to("cuda", non_blocking=True)
        tok = int(fast.prefill(ids, 0, pool, 0).argmax())
        times.append(time.perf_counter() - t0)
    del g, tok
    res["ttft_2048_ms"] = round(sorted(times[1:])[len(times[1:]) // 2] * 1e3, 2)


def bench_context(fast, pool, runner, res: dict) -> None:  # type: ignore[no-untyped-def]
    out = {}
    for ctx in (1024, 32768):
        for p in pool:
            p[0].zero_()
        g = torch.Generator(device="cuda").manual_seed(4)
        done = 0
        while done < ctx:
            n = min(8192, ctx - done)
            ids = torch.randint(3, CFG_7B["vocab"], (n,), device="cuda", generator=g)
            tok = int(fast.prefill(ids, done, pool, 0).argmax())
            done += n
        runner.load_inputs([tok], [ctx], [0], 1)
        gpu_ms = time_events(lambda: runner.replay(1), iters=50, warmup=3)
        out[ctx] = {
            "graph_ms": round(gpu_ms, 4),
            "loop_ms": round(decode_loop(runner, [tok], [ctx], [0], 50) * 1e3, 4),
        }
    out["ratio_32k_over_1k"] = round(out[32768]["graph_ms"] / out[1024]["graph_ms"], 4)
    res["context"] = out


def bench_profile(runner, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Per-kernel GPU time of graph replays at batch 1 and 256 (CUPTI sees kernels inside graphs)."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for batch in (1, 256):
        runner.load_inputs([5] * batch, [100] * batch, list(range(batch)), runner.bucket(batch))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                runner.replay(batch)
            torch.cuda.synchronize()
        try:
            table = prof.key_averages().table(
                sort_by="device_time_total", row_limit=20, max_name_column_width=70
            )
        except Exception:
            table = prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=20, max_name_column_width=70
            )
        lines.append(f"=== batch {batch}, 5 graph replays ===\n{table}")
    path.write_text("\n".join(lines))


def bench_baseline(res: dict, new_tokens: int = 32) -> None:
    """HF generate with our model class, one request at a time (the tutorial's way)."""
    try:
        from worker.model import hf  # noqa: F401
    except ImportError as exc:
        res["baseline"] = f"skipped: {exc}"
        return
    res["baseline"] = "not wired yet"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--micro", action="store_true", help="also run the kernel micro-benchmarks")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--profile", type=Path, help="write a per-kernel profile of graph replays here")
    args = ap.parse_args()
    from worker.model.kernels.graphs import DecodeGraphRunner

    res: dict = {"env": env_info(), "copy_TBps": round(copy_bandwidth(), 3)}
    if args.micro:
        res["micro"] = run_all()
    t0 = time.perf_counter()
    fast = build_fast()
    pool = fast.new_state_pool(257)  # slot 256 = scratch for warm-up
    weight_bytes = (
        sum(
            t.numel() * t.element_size()
            for lw in fast.layers
            for t in (lw.qkvu_w, lw.out_w, lw.l12_w, lw.l3_w)
        )
        + fast.embed.numel() * 2
    )
    state_bytes = sum(p[0].numel() * 4 for p in pool)
    fast.warmup(pool, 256)
    runner = DecodeGraphRunner(fast, pool, max_batch=256)
    runner.capture()
    res["startup_s"] = round(time.perf_counter() - t0, 1)
    bw = res["copy_TBps"] * 1e12
    res["floors"] = {
        "weight_GB": weight_bytes / 1e9,
        "state_MB_per_seq": state_bytes / 1e6,
        "b1_tokens_per_s": round(bw / weight_bytes, 1),
        "b64_tokens_per_s": round(64 * bw / (weight_bytes + 64 * 2 * state_bytes), 1),
        "b256_tokens_per_s": round(256 * bw / (weight_bytes + 256 * 2 * state_bytes), 1),
    }
    bench_decode(fast, pool, runner, res, args.steps)
    if args.profile:
        bench_profile(runner, args.profile)
    bench_ttft(fast, pool, res)
    bench_context(fast, pool, runner, res)
    if not args.skip_baseline:
        bench_baseline(res)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
