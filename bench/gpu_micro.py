"""Kernel micro-benchmarks for the CUDA fast path (one GPU; imported by bench/gpu.py, or run alone).

    python -m bench.gpu_micro [--json out.json]

Measures, on the card in hand: device copy bandwidth (the ceiling used for every floor), the in-place
decode attention kernel per tiling against fla's ``fused_recurrent_simple_gla`` (state bytes read +
written per second, CUDA-graph timings), and batch-1 weight GEMVs (Triton kernel per config against
cuBLAS through ``F.linear``) on the 7B shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


def time_events(fn: Callable[[], object], iters: int = 50, warmup: int = 5) -> float:
    """Median milliseconds of ``fn`` (device events around each call)."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def time_graph(fn: Callable[[], object], iters: int = 50, reps: int = 10) -> float:
    """Median ms of one ``fn`` call, captured ``reps`` times in a CUDA graph and replayed (GPU time)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    return time_events(g.replay, iters=iters, warmup=3) / reps


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device-to-device copy, bytes read + written per second (TB/s)."""
    n = int(gib * 2**30) // 4
    a = torch.randn(n, device="cuda")
    b = torch.empty_like(a)
    ms = time_events(lambda: b.copy_(a), iters=30)
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e12


def _decode_row(b: int, dk: int, h: int, d: int) -> dict:
    """One batch size and state width: every tiling of our kernel, and fla's decode for comparison."""
    from tnllm.model.kernels.attention import decode_attention

    lrpe = dk == 2 * d
    pool = torch.randn(b, h, dk, d, device="cuda") * 0.01
    slots = torch.randperm(b, device="cuda")
    z = torch.randn(b, 4 * h * d, device="cuda").bfloat16()
    e = h * d
    decay = torch.rand(h, device="cuda") * 0.5 + 0.5
    theta = torch.rand(h, d, device="cuda") if lrpe else None
    pos = torch.randint(0, 4096, (b,), device="cuda")
    nbytes = 2 * pool.numel() * 4
    row: dict = {"dk": dk, "batch": b, "state_MB": round(nbytes / 2 / 1e6, 1)}
    for t in [None, (16, 2), (16, 4), (32, 4), (32, 8), (64, 8)]:
        if t is not None and t[0] * triton_next_pow2(dk) > 16384:
            continue

        def run(t: tuple[int, int] | None = t) -> None:
            decode_attention(
                z[:, :e], z[:, e : 2 * e], z[:, 2 * e : 3 * e], pool, slots, decay,
                positions=pos, theta=theta, tiling=t,
            )  # fmt: skip

        ms = time_graph(run)
        row[f"ours{t or 'default'}_us"] = round(ms * 1e3, 1)
        row[f"ours{t or 'default'}_TBps"] = round(nbytes / (ms * 1e-3) / 1e12, 2)
    try:
        from fla.ops.simple_gla import fused_recurrent_simple_gla
    except ImportError:
        return row
    q = F.silu(z[:, :e].float()).bfloat16().view(b, 1, h, d)
    k = F.silu(z[:, e : 2 * e].float()).bfloat16().view(b, 1, h, d)
    if lrpe:
        q, k = torch.cat([q, q], -1), torch.cat([k, k], -1)
    v = z[:, 2 * e : 3 * e].reshape(b, 1, h, d).contiguous()
    gg = -torch.log(decay)

    def fla_run() -> object:
        return fused_recurrent_simple_gla(
            q, k, v, g_gamma=gg, scale=1.0, initial_state=pool, output_final_state=True
        )

    ms = time_graph(fla_run)
    row["fla_alone_us"] = round(ms * 1e3, 1)
    row["fla_alone_TBps"] = round(nbytes / (ms * 1e-3) / 1e12, 2)
    return row


def bench_decode_attention(batches: tuple[int, ...] = (1, 64, 256), h: int = 32, d: int = 128) -> list[dict]:
    return [_decode_row(b, dk, h, d) for dk in (d, 2 * d) for b in batches]


def triton_next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


GEMV_SHAPES = {
    "qkvu": (16384, 4096),
    "out_proj": (4096, 4096),
    "l12": (22016, 4096),
    "l3": (4096, 11008),
    "lm_head": (64000, 4096),
}
GEMV_CONFIGS = [
    (8, 512, 4, 4),
    (16, 256, 4, 4),
    (16, 512, 8, 3),
    (32, 256, 8, 3),
    (4, 1024, 4, 4),
    (8, 1024, 8, 3),
    (16, 128, 4, 6),
]


def _gemv_row(name: str, n: int, k: int) -> dict:
    from tnllm.model.kernels.gemv import gemv

    # rotate over enough weight copies to defeat the 50 MB L2
    copies = max(2, int(4e8 // (n * k * 2)) + 1)
    ws = [torch.randn(n, k, device="cuda").bfloat16() for _ in range(copies)]
    x = torch.randn(1, k, device="cuda").bfloat16()
    nbytes = n * k * 2
    it = [0]

    def nxt() -> torch.Tensor:
        it[0] = (it[0] + 1) % copies
        return ws[it[0]]

    row: dict = {"shape": name, "N": n, "K": k}
    ms = time_graph(lambda: F.linear(x, nxt()), reps=copies)
    row["cublas_us"], row["cublas_TBps"] = round(ms * 1e3, 1), round(nbytes / (ms * 1e-3) / 1e12, 2)
    ref = F.linear(x, ws[0]).float()
    for cfg in GEMV_CONFIGS:
        err = float((gemv(x, ws[0], config=cfg).float() - ref).norm() / ref.norm())
        ms = time_graph(lambda cfg=cfg: gemv(x, nxt(), config=cfg), reps=copies)
        row[f"triton{cfg}_TBps"] = round(nbytes / (ms * 1e-3) / 1e12, 2)
        row[f"triton{cfg}_err"] = f"{err:.1e}"
    return row


def bench_gemv() -> list[dict]:
    rows = []
    for name, (n, k) in GEMV_SHAPES.items():
        rows.append(_gemv_row(name, n, k))
        torch.cuda.empty_cache()
    return rows


def run_all() -> dict:
    out = {"copy_TBps": round(copy_bandwidth(), 3)}
    out["decode_attention"] = bench_decode_attention()
    out["gemv"] = bench_gemv()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = run_all()
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
