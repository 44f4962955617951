"""State reuse in the engine: time to first token with a cached 2,000-token prefix, and the per-turn
latency of a 20-turn conversation continued from its saved state, each against a full recompute.

    python -m bench.state [--device cpu|cuda] [--size small|tiny|7b] [--prefix 2000] [--turns 20]
                          [--json FILE]

The production engine (``Engine`` with its ``StateStore``, the backend ``build_engine`` would pick:
the reference model on CPU, the CUDA fast path with its decode graphs on a GPU), tokenizer-less so
no detokenisation is timed, driven step by step on this thread. Weights: a demo checkpoint on CPU
(``--size small``: ~30 M parameters, default; ``tiny``), or random bf16 weights with the real 7B
shapes on CUDA (``--size 7b``, ``bench.gpu.random_model``).

1. TTFT (submit → first token on the host) of ``--reps`` prompts = one shared random prefix of
   ``--prefix`` tokens + a different 32-token tail each: with the prefix's state saved once
   beforehand (a request whose ``cache_points`` end a chunk there, as a conversation's turn end or
   ``POST /v1/prefixes`` does), and with ``state_cache=False`` (the same prompts prefilled whole).
2. A conversation of ``--turns`` turns: a 64-token first prompt, then each turn adds the reply
   (``--reply`` greedy tokens) and ``--turn-tokens`` new tokens; per turn, the latency from submit to
   the finished reply, continuing from the previous turn's final state vs recomputing the whole
   conversation, the two run turn by turn interleaved (machine noise hits both alike); reported
   per turn: time to first token and latency. Greedy replies are compared token for token
   (``identical``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tnllm.engine import Engine, EngineRequest, SamplingParams
from tnllm.engine.backend import select_backend
from tnllm.engine.states import StateBudgets, StateStore, model_fingerprint


def load_model(device: str, size: str) -> Any:
    if size == "7b":
        from bench.gpu import random_model

        return random_model()
    from tnllm.model import load_pretrained
    from tnllm.model.demo import write_demo_checkpoint

    folder = write_demo_checkpoint(Path(tempfile.mkdtemp()) / size, size=size, seed=0)
    return load_pretrained(folder, device=device, dtype=torch.float32).eval()


def make_engine(model: Any, slots: int, budget: int) -> Engine:
    device = next(model.parameters()).device
    states = StateStore(
        model_fingerprint(model, torch.float32),
        device=device,
        dtype=torch.float32,
        budgets=StateBudgets(device=4 << 30, host=0, disk=0),
    )
    engine = Engine(
        model, None, slots=slots, prefill_token_budget=budget, backend=select_backend(model), states=states
    )
    engine.runner.prepare(max_batch=slots)
    return engine


def ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def timed(engine: Engine, req: EngineRequest) -> tuple[float, float, Any]:
    """(seconds to the first token, seconds to the result, result), stepping on this thread."""
    first: list[float] = []
    sync(engine)
    t0 = time.perf_counter()
    handle = engine.submit(req, lambda ev: first or first.append(time.perf_counter()))
    while not handle.done():
        engine.step()
    done = time.perf_counter()
    return first[0] - t0, done - t0, handle.result(0)


def sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def greedy(rid: str, prompt: list[int], n: int, **state: Any) -> EngineRequest:
    return EngineRequest(rid, prompt, SamplingParams(max_new_tokens=n, ignore_eos=True), **state)


def bench_ttft(engine: Engine, vocab: int, prefix: int, reps: int) -> dict[str, Any]:
    shared = ids(prefix, vocab, 1)
    timed(engine, greedy("warm", shared + ids(8, vocab, 2), 1, cache_points=(prefix,)))  # saves it
    rows: dict[str, list[float]] = {"cached": [], "recompute": []}
    cached_tokens = []
    for r in range(reps):
        prompt = shared + ids(32, vocab, 100 + r)
        ttft, _, result = timed(engine, greedy(f"c{r}", prompt, 1))
        rows["cached"].append(ttft)
        cached_tokens.append(result.cached_tokens)
        ttft, _, _ = timed(engine, greedy(f"u{r}", prompt, 1, state_cache=False))
        rows["recompute"].append(ttft)
    out: dict[str, Any] = {f"{k}_ms": round(statistics.median(v) * 1e3, 2) for k, v in rows.items()}
    out["cached_tokens"] = cached_tokens
    out["speedup"] = round(out["recompute_ms"] / out["cached_ms"], 1)
    return out


def bench_conversation(
    engine: Engine, vocab: int, turns: int, reply: int, turn_tokens: int
) -> dict[str, Any]:
    """The two conversations run turn by turn, interleaved, so machine noise hits both alike."""
    modes = {"continue_from": True, "recompute": False}
    conv = {m: ids(64, vocab, 7) for m in modes}
    ttft: dict[str, list[float]] = {m: [] for m in modes}
    lat: dict[str, list[float]] = {m: [] for m in modes}
    outs: dict[str, list[list[int]]] = {m: [] for m in modes}
    for t in range(turns):
        for mode, cache in modes.items():
            first, seconds, result = timed(engine, greedy(f"{mode}{t}", conv[mode], reply, state_cache=cache))
            ttft[mode].append(first)
            lat[mode].append(seconds)
            outs[mode].append(result.token_ids)
            conv[mode] = [*conv[mode], *result.token_ids, *ids(turn_tokens, vocab, 1000 + t)]
    marks = sorted({0, 1, turns // 2, turns - 1})
    return {
        "identical": outs["continue_from"] == outs["recompute"],
        "final_context_tokens": 64 + turns * (reply + turn_tokens),
        "per_turn_ms": {
            f"turn{k + 1}": {m: [round(ttft[m][k] * 1e3, 1), round(lat[m][k] * 1e3, 1)] for m in modes}
            for k in marks
        },
        "per_turn_ms_fields": ["time to first token", "latency (submit to the whole reply)"],
        "total_s": {m: round(sum(lat[m]), 2) for m in modes},
        "ttft_total_s": {m: round(sum(ttft[m]), 2) for m in modes},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "7b"])
    ap.add_argument("--prefix", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--reply", type=int, default=16)
    ap.add_argument("--turn-tokens", type=int, default=24)
    ap.add_argument("--budget", type=int, default=512, help="prefill token budget (the Settings default)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.size == "7b" and args.device != "cuda":
        ap.error("--size 7b needs --device cuda")
    torch.set_num_threads(args.threads)
    model = load_model(args.device, args.size)
    engine = make_engine(model, slots=4, budget=args.budget)
    vocab = int(model.config.vocab_size)
    with torch.inference_mode():
        report = {
            "env": {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "device": str(engine.device),
                "backend": engine.backend.name,
                "threads": args.threads,
            },
            "args": {k: str(v) for k, v in vars(args).items()},
            "state_bytes": int(model.state_bytes_per_sequence()),
            "ttft": bench_ttft(engine, vocab, args.prefix, args.reps),
            "conversation": bench_conversation(engine, vocab, args.turns, args.reply, args.turn_tokens),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
