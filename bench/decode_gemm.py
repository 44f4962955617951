"""Split-K GEMM choices for a decode step, measured inside the captured decode graph (one GPU).

    python bench/decode_gemm.py [--rows 64] [--json FILE]

Random bf16 weights with the 7B's shapes (FastTransnormer.random: D 4096, 30 layers, 32 heads,
F 11008, vocab 64000). For each variant of ``FastTransnormer.splitk`` (weight shape → split-K
configuration, gemm.py; the empty table is today's path, the skinny kernel for every matrix) the
decode step for ``--rows`` rows is captured in a CUDA graph and its replay timed (CUDA events,
median of 30 after 3 warm-ups); the baseline is measured first and last in the same run, and each
variant's logits are checked against the baseline's. Stage 1 tries each matrix alone; stage 2
combines each matrix's best choice that beat the baseline. A tool for choosing the table; the
decode targets are bench/gpu.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHAPES = {"qkvu": (16384, 4096), "out": (4096, 4096), "glu_in": (22016, 4096), "down": (4096, 11008)}
# (BN, BK, splits, warps, stages)
NARROW = [(64, 128, 2, 4, 4), (64, 128, 4, 4, 4), (128, 128, 2, 4, 4), (128, 128, 4, 4, 4),
          (128, 128, 4, 8, 3), (128, 64, 4, 4, 5), (256, 64, 4, 8, 4)]  # fmt: skip
WIDE = [(128, 128, 2, 4, 4), (128, 128, 2, 8, 3), (256, 64, 2, 8, 4), (64, 128, 2, 4, 4)]


def main() -> int:
    import torch
    from gpu_micro import time_events

    from worker.model.kernels.fastpath import FastTransnormer
    from worker.model.kernels.gemm import GemmConfig
    from worker.model.kernels.graphs import DecodeGraphRunner

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = args.rows
    fast = FastTransnormer.random(d_model=4096, n_layers=30, n_heads=32, d_ffn=11008, vocab=64000)
    pool = fast.new_state_pool(rows)
    ids, pos, slots = [5 + i for i in range(rows)], [100] * rows, list(range(rows))

    def measure(table: dict[tuple[int, int], Any]) -> tuple[float, torch.Tensor]:
        fast.splitk = table
        runner = DecodeGraphRunner(fast, pool, max_batch=rows, buckets=[rows])
        runner.capture()
        runner.load_inputs(ids, pos, slots, rows)
        ms = time_events(lambda: runner.replay(rows), iters=30, warmup=3)
        for state in pool:  # replays advanced the states: compare logits from fresh ones
            state.zero_()
        logits = runner.decode(torch.tensor(ids), torch.tensor(pos), torch.tensor(slots)).float().clone()
        return ms, logits

    res: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "rows": rows, "variants": []}
    base_ms, base_logits = measure({})
    res["baseline_first_ms"] = round(base_ms, 4)
    print(json.dumps({"baseline_ms": base_ms}), flush=True)
    best: dict[str, tuple[float, Any]] = {}
    for name, (n, k) in SHAPES.items():
        for bn, bk, s, w, st in NARROW if n == 4096 else WIDE:
            cfg = GemmConfig(0, bn, bk, s, w, st)
            try:
                ms, logits = measure({(n, k): cfg})
            except Exception as exc:  # a configuration that does not fit (shared memory) is skipped
                print(name, list(cfg), type(exc).__name__, flush=True)
                continue
            err = float((logits - base_logits).abs().max() / base_logits.abs().max())
            row = {"matrix": name, "cfg": list(cfg), "ms": round(ms, 4), "delta_ms": round(ms - base_ms, 4),
                   "max_rel_logit_diff": round(err, 5)}  # fmt: skip
            res["variants"].append(row)
            print(json.dumps(row), flush=True)
            if err < 0.02 and ms < base_ms and (name not in best or ms < best[name][0]):
                best[name] = (ms, cfg)
    if best:
        table = {SHAPES[name]: cfg for name, (_, cfg) in best.items()}
        ms, logits = measure(table)
        res["combined"] = {"table": {name: list(cfg) for name, (_, cfg) in best.items()}, "ms": round(ms, 4)}
        print(json.dumps(res["combined"]), flush=True)
    res["baseline_last_ms"] = round(measure({})[0], 4)
    print(json.dumps({"baseline_last_ms": res["baseline_last_ms"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
