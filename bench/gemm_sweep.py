"""Decode-batch GEMMs of the 7B on this GPU: cuBLAS vs the skinny kernel vs split-K configurations.

    python bench/gemm_sweep.py [--rows 64 256] [--json FILE]

For each weight shape of a 7B layer (qkvu 16384×4096, out 4096×4096, GLU in 22016×4096, GLU down
4096×11008) and the LM head (64000×4096) at each row count: the time of ``F.linear`` (cuBLAS), of
``gemv.skinny_linear`` (16 < rows <= 128) and of every ``gemm.splitk_linear`` configuration below
(GEMM + reduce), each with ``triton.testing.do_bench`` (L2 flushed between calls: a decode step's
weights never fit in L2), as µs and as TB/s of weight bytes; then the step's GEMM time with each
shape's best choice vs cuBLAS/skinny (×30 layers + the head). A tool to pick ``gemm`` tables, not a
target: the decode targets are bench/gpu.py's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"qkvu": (16384, 4096), "out": (4096, 4096), "glu_in": (22016, 4096), "down": (4096, 11008),
          "lm_head": (64000, 4096)}  # fmt: skip
PER_STEP = {"qkvu": 30, "out": 30, "glu_in": 30, "down": 30, "lm_head": 1}


def candidates(rows: int) -> list[Any]:
    from worker.model.kernels.gemm import GemmConfig

    if rows <= 128:
        bm = max(16, 1 << (rows - 1).bit_length())
        tiles = [(64, 128, 4, 4), (128, 128, 4, 4), (128, 64, 4, 5), (64, 256, 4, 3), (128, 128, 8, 3),
                 (256, 64, 8, 4), (32, 256, 4, 4)]  # fmt: skip
        return [
            GemmConfig(bm, bn, bk, s, w, st)
            for (bn, bk, w, st), s in itertools.product(tiles, (1, 2, 3, 4, 6))
        ]
    tiles2 = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 128, 8, 3),
              (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 256, 64, 8, 4)]  # fmt: skip
    return [
        GemmConfig(bm, bn, bk, s, w, st) for (bm, bn, bk, w, st), s in itertools.product(tiles2, (1, 2, 3, 4))
    ]


def main() -> int:
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench

    from worker.model.kernels.gemm import splitk_linear, splitk_ok
    from worker.model.kernels.gemv import skinny_linear, skinny_ok

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for rows in args.rows:
        per: dict[str, Any] = {}
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, w).float()
            gb = n * k * 2 / 1e9
            res: dict[str, Any] = {"cublas_us": do_bench(lambda x=x, w=w: F.linear(x, w)) * 1e3}
            if skinny_ok(rows, w):
                res["skinny_us"] = do_bench(lambda x=x, w=w: skinny_linear(x, w)) * 1e3
            timed = []
            for cfg in candidates(rows):
                if not splitk_ok(w, cfg):
                    continue
                try:
                    y = splitk_linear(x, w, cfg)
                    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                    if err > 2e-2:
                        print(f"{name} {cfg}: error {err:.3g}", flush=True)
                        continue
                    timed.append((do_bench(lambda x=x, w=w, cfg=cfg: splitk_linear(x, w, cfg)) * 1e3, cfg))
                except Exception as exc:  # a config that does not compile (shared memory) is skipped
                    print(f"{name} {cfg}: {type(exc).__name__}", flush=True)
            timed.sort(key=lambda t: t[0])
            res["splitk_top"] = [[round(t, 2), list(c)] for t, c in timed[:5]]
            base = min(res["cublas_us"], res.get("skinny_us", float("inf")))
            res["best_us"] = min(base, timed[0][0]) if timed else base
            res["baseline_us"] = base
            res["best_TBps"] = round(gb / res["best_us"] * 1e6 / 1e3, 3)
            res["baseline_TBps"] = round(gb / base * 1e6 / 1e3, 3)
            per[name] = res
            shown = {key: (round(v, 2) if isinstance(v, float) else v) for key, v in res.items()}
            print(rows, name, json.dumps(shown), flush=True)
        step_base = sum(per[s]["baseline_us"] * PER_STEP[s] for s in per) / 1e3
        step_best = sum(per[s]["best_us"] * PER_STEP[s] for s in per) / 1e3
        per["step_ms"] = {"baseline": round(step_base, 3), "best": round(step_best, 3)}
        print(rows, "step GEMM ms", per["step_ms"], flush=True)
        out[str(rows)] = per
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
