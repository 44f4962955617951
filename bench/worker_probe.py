"""Run a command (the GPU worker) in this interpreter with probes: a CUDA activity window, a thread
switch interval.

    python -m bench.worker_probe [--cuda-window OUT.json [--trigger FILE] [--delay S] [--seconds S]]
        [--switch-interval S] -- python -m tnllm.cli.main worker ...

The command runs as ``-m MODULE`` or a script. ``--cuda-window``: a side thread waits for FILE to exist
(if given), then DELAY_S, records CUDA activity (CUPTI, kernels inside graph replays included) for
SECONDS and writes a summary to OUT.json; ``profile_later`` does the same inside a running process,
and bench/service_gpu.py uses both, so the worker's window and the engine-alone window are read the
same way. ``--switch-interval``: ``sys.setswitchinterval`` before the command starts (how long a
thread waiting for the GIL waits before it asks the holder to drop it; Python's default is 5 ms).

The summary splits the window's span into time with some kernel running (``busy_ms``) and gaps
(``gaps``: counts and total by length), and lists the kernels by total time. A step's kernels taking
longer is a GPU-side cause (clocks, contention); long gaps are a host-side one (late launches).
Summarising holds the process's GIL for seconds after a window of ~30 k kernels (one H100 7B decode,
2 s): figures of the same run after the window are perturbed.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GAP_BUCKETS_US = (10.0, 100.0, 1000.0, 10000.0)


def summarize(intervals: list[tuple[str, float, float]], top: int = 25) -> dict[str, Any]:
    """Busy/idle split and per-name totals of ``(name, start_us, end_us)`` device activities."""
    if not intervals:
        return {"kernels": 0}
    intervals = sorted(intervals, key=lambda iv: iv[1])
    busy = 0.0
    gaps = {f"<{b:g}us": [0, 0.0] for b in GAP_BUCKETS_US} | {f">={GAP_BUCKETS_US[-1]:g}us": [0, 0.0]}
    cur_start, cur_end = intervals[0][1], intervals[0][2]
    for _, start, end in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            gap = start - cur_end
            key = next((f"<{b:g}us" for b in GAP_BUCKETS_US if gap < b), f">={GAP_BUCKETS_US[-1]:g}us")
            gaps[key][0] += 1
            gaps[key][1] += gap
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, start, end in intervals:
        by_name[name][0] += 1
        by_name[name][1] += end - start
    span = intervals[-1][2] - intervals[0][1]
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "kernels": len(intervals),
        "span_ms": round(span / 1e3, 3),
        "busy_ms": round(busy / 1e3, 3),
        "busy_fraction": round(busy / span, 4) if span else 0.0,
        "gaps": {k: {"count": int(c), "ms": round(t / 1e3, 3)} for k, (c, t) in gaps.items()},
        "by_name": [
            {"name": name[:90], "count": int(c), "total_ms": round(t / 1e3, 3), "mean_us": round(t / c, 2)}
            for name, (c, t) in ranked
        ],
    }


def profile_window(seconds: float) -> dict[str, Any]:
    """Record this process's CUDA activity for ``seconds`` (any thread's launches) and summarise it."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        time.sleep(seconds)
    recorded = time.perf_counter() - t0
    intervals = [
        (e.name, float(e.time_range.start), float(e.time_range.end))
        for e in prof.events()
        if e.device_type == DeviceType.CUDA
    ]
    out = summarize(intervals)
    out["recorded_s"] = round(recorded, 3)
    return out


def profile_later(delay_s: float, seconds: float, out: Path, trigger: Path | None = None) -> threading.Thread:
    """Start a daemon thread that waits for ``trigger`` to exist (if given) and ``delay_s`` more, then
    writes ``profile_window(seconds)`` to ``out``."""

    def run() -> None:
        while trigger is not None and not trigger.exists():
            time.sleep(0.05)
        time.sleep(delay_s)
        try:
            result = profile_window(seconds)
        except Exception as exc:  # a bench aid: report, never take the profiled process down
            result = {"error": repr(exc)}
        out.write_text(json.dumps(result, indent=1))

    thread = threading.Thread(target=run, name="cuda-window", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuda-window", type=Path, metavar="OUT", help="write a CUDA window summary here")
    ap.add_argument("--trigger", type=Path, help="start the window's delay once this file exists")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before recording")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds recorded")
    ap.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for the command (s)")
    ap.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- python -m MODULE ... | -- python SCRIPT ..."
    )
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command and Path(command[0]).name.startswith("python"):
        command = command[1:]
    if not command:
        ap.error("no command to run after --")
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.cuda_window:
        profile_later(args.delay, args.seconds, args.cuda_window, args.trigger)
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
