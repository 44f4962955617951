"""Engine benchmark: continuous batching vs one-request-at-a-time HF ``generate`` (the tutorial's way).

Same checkpoint, same prompts, same ``max_new_tokens`` (EOS ignored so every request generates
exactly that many), in one run:

* baseline: the requests one after another through HF ``generate`` on our model (tnllm/model/hf.py);
* ours: all requests submitted to the engine together, with ``--concurrency`` slots (1, 8, 32, 64).

All requests "arrive" at t=0 in both cases: time to first token and latency count from there, so
waiting for a turn is part of them. Reported: aggregate generated tokens/s, TTFT p50/p99,
request latency p50/p99.

    python -m bench.engine                         # small demo model, CPU
    python -m bench.engine --model PATH --device cuda --dtype bfloat16 --concurrency 1 8 32 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tnllm.engine import Engine, EngineRequest, SamplingParams


@dataclass
class Row:
    name: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    latency_p50: float
    latency_p99: float


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def make_row(name: str, conc: int, tokens: int, seconds: float, ttft: list[float], lat: list[float]) -> Row:
    return Row(
        name, conc, len(lat), tokens, seconds, tokens / seconds,
        pct(ttft, 0.5), pct(ttft, 0.99), pct(lat, 0.5), pct(lat, 0.99),
    )  # fmt: skip


def make_prompts(n: int, vocab: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    """n reproducible random prompts of lengths in [min_len, max_len] (ids above the specials)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]


# --- baseline: HF generate, one request at a time ----------------------------------------------
class _FirstTokenClock:
    """A transformers streamer that notes when the first new token comes out."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def load_hf(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    from tnllm.model.hf import register_with_transformers

    register_with_transformers()

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()


def run_baseline(model: Any, prompts: list[list[int]], new_tokens: int, device: torch.device) -> Row:
    ttft, lat, tokens = [], [], 0
    t0 = time.perf_counter()
    for p in prompts:
        clock = _FirstTokenClock()
        ids = torch.tensor([p], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                streamer=clock,
            )
        lat.append(time.perf_counter() - t0)
        ttft.append((clock.first or time.perf_counter()) - t0)
        tokens += out.shape[1] - len(p)
    return make_row("HF generate, one at a time", 1, tokens, time.perf_counter() - t0, ttft, lat)


# --- ours: the engine -------------------------------------------------------------------------
def run_engine(model: Any, prompts: list[list[int]], new_tokens: int, conc: int, budget: int) -> Row:
    engine = Engine(model, None, slots=conc, prefill_token_budget=budget, max_context=1 << 30)
    first: dict[str, float] = {}
    done: dict[str, float] = {}

    def on_token(ev: Any) -> None:
        first.setdefault(ev.request_id, time.perf_counter())

    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    handles = [engine.submit(EngineRequest(f"b{i}", p, params), on_token) for i, p in enumerate(prompts)]
    while len(done) < len(handles):
        engine.step()
        now = time.perf_counter()
        for h in handles:
            if h.request_id not in done and h.done():
                done[h.request_id] = now
    seconds = time.perf_counter() - t0
    tokens = sum(h.result(0).completion_tokens for h in handles)
    ttft = [first[h.request_id] - t0 for h in handles]
    lat = [done[h.request_id] - t0 for h in handles]
    return make_row(f"engine, {conc} slots", conc, tokens, seconds, ttft, lat)


def warm_up(model: Any, hf_model: Any | None, device: torch.device) -> None:
    p = make_prompts(2, int(model.config.vocab_size), 8, 8, seed=99)
    run_engine(model, p, 4, 2, 512)
    if hf_model is not None:
        run_baseline(hf_model, p[:1], 4, device)


def table(rows: list[Row], baseline: Row | None) -> str:
    cols = f"{'tok/s':>8} {'x base':>7} {'TTFT p50':>9} {'p99':>7} {'lat p50':>8} {'p99':>7} {'s':>6}"
    head = f"{'run':<28} {cols}"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r.tokens_per_s / baseline.tokens_per_s:.2f}" if baseline else "-"
        lines.append(
            f"{r.name:<28} {r.tokens_per_s:>8.1f} {speed:>7} {r.ttft_p50:>9.2f} {r.ttft_p99:>7.2f} "
            f"{r.latency_p50:>8.2f} {r.latency_p99:>7.2f} {r.seconds:>6.1f}"
        )
    return "\n".join(lines)


def resolve_model(arg: str) -> Path:
    if arg.startswith("demo-"):
        from tnllm.model.demo import write_demo_checkpoint

        size = arg.removeprefix("demo-")
        out = Path(".tnllm") / "bench" / f"demo-{size}"
        if not (out / "config.json").exists():
            write_demo_checkpoint(out, size=size)
        return out
    return Path(arg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-small", help="checkpoint folder, or demo-small / demo-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=0, help="default: the largest concurrency")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    ap.add_argument("--prefill-budget", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--baseline-threads",
        type=int,
        nargs="+",
        default=None,
        help="run the baseline once per thread count and compare against the fastest "
        "(default: --threads only). One token at a time is memory-bound, so it may be fastest "
        "on fewer threads than the batched engine.",
    )
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--baseline-requests",
        type=int,
        default=0,
        help="run the baseline on the first N prompts only (its tokens/s does not depend on N; "
        "its latencies then cover fewer requests). Default: all",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from tnllm.model import load_pretrained

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    path = resolve_model(args.model)
    model = load_pretrained(path, device=device, dtype=dtype).eval()
    hf_model = None if args.no_baseline else load_hf(path, device, dtype)
    n = args.requests or max(args.concurrency)
    prompts = make_prompts(n, int(model.config.vocab_size), *args.prompt_len, seed=0)
    warm_up(model, hf_model, device)

    rows: list[Row] = []
    baseline: Row | None = None
    engine_threads = torch.get_num_threads()
    if hf_model is not None:
        for threads in args.baseline_threads or [engine_threads]:
            torch.set_num_threads(threads)
            row = run_baseline(hf_model, prompts[: args.baseline_requests or n], args.new_tokens, device)
            row.name = f"HF generate, 1 at a time, {threads}t"
            rows.append(row)
            print(table(rows[-1:], None).splitlines()[-1], file=sys.stderr, flush=True)
            if baseline is None or row.tokens_per_s > baseline.tokens_per_s:
                baseline = row
        torch.set_num_threads(engine_threads)
    for conc in args.concurrency:
        rows.append(run_engine(model, prompts, args.new_tokens, conc, args.prefill_budget))
        print(table(rows[-1:], baseline).splitlines()[-1], file=sys.stderr, flush=True)

    meta = {
        "model": str(path),
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": engine_threads,
        "baseline": None if baseline is None else baseline.name,
        "load_avg": os.getloadavg(),
        "dtype": args.dtype,
        "requests": n,
        "baseline_requests": 0 if hf_model is None else min(n, args.baseline_requests or n),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "new_tokens": args.new_tokens,
        "prompt_len": args.prompt_len,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(json.dumps(meta))
        print(table(rows, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
