"""TransNormerLLM-7B on one GPU: the engine on the CUDA fast path against its floors and a baseline.

    python -m bench.gpu [--micro] [--skip-baseline] [--profile FILE] [--json FILE]

Random bf16 weights with the real 7B shapes (docs/MODEL_SPEC.md §2.1) are built directly on the GPU (no
checkpoint needed) inside our ``TransnormerLM``; everything else is the production code path:
``Engine`` (continuous batching, tokenizer-less so no detokenisation cost is measured) with the
fast path's CUDA-graph decode prepared as ``build_engine`` does. Reports (medians):
- copy bandwidth and the floors derived from it (all weights per step at batch 1; weights + one
  state round trip per sequence at batch 64/256);
- engine decode tokens/s at 1, 64 and 256 concurrent sequences (full-batch steps only), beside the
  GPU time of one graph replay;
- time to first token of a 2,048-token prompt on an idle engine (submit -> first token on the host);
- batch-1 decode step at 1k vs 32k tokens of context;
- baseline: HF ``generate`` with our model class (tnllm/model/hf.py), one request at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.gpu_micro import copy_bandwidth, run_all, time_events

CONFIG_7B = {
    "vocab_size": 64000,
    "decoder_embed_dim": 4096,
    "hidden_dim": 4096,
    "decoder_layers": 30,
    "decoder_attention_heads": 32,
    "glu_dim": 11008,
    "linear_use_lrpe_list": [1] + [0] * 29,
    "no_scale_embedding": False,
    "linear_act_fun": "silu",
    "norm_type": "simplermsnorm",
}


def env_info() -> dict:
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("triton", "fla-core", "transformers"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    try:
        q = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem"
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def random_model(seed: int = 0):  # type: ignore[no-untyped-def]
    """Our TransnormerLM with random bf16 7B-shaped weights, materialised directly on the GPU."""
    from tnllm.model.config import TransnormerConfig
    from tnllm.model.formulas import lrpe_theta_init
    from tnllm.model.modeling import TransnormerLM

    cfg = TransnormerConfig.from_dict(CONFIG_7B, source="bench 7B config")
    with torch.device("meta"):
        model = TransnormerLM(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("lrpe.theta"):
            p.data = lrpe_theta_init(cfg.num_heads, cfg.head_dim).reshape(p.shape).float().cuda()
        else:
            p.data.normal_(0.0, 0.02, generator=g)
    return model.eval()


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(
        3, CONFIG_7B["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


def engine_decode(engine, batch: int, steps: int, prompt_len: int = 64, sampled: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Aggregate decode tokens/s over full-batch steps of ``batch`` concurrent sequences (greedy, or
    temperature 0.8 / top-p 0.95 / top-k 50 with a seed per request when ``sampled``)."""
    from tnllm.engine.types import EngineRequest, SamplingParams

    count = [0]
    extra: dict = {"temperature": 0.8, "top_p": 0.95, "top_k": 50} if sampled else {}
    params = SamplingParams(max_new_tokens=steps + 1, ignore_eos=True, **extra)
    handles = [
        engine.submit(
            EngineRequest(f"b{batch}-{i}", prompt(prompt_len, i), params),
            lambda ev: count.__setitem__(0, count[0] + 1),
        )
        for i in range(batch)
    ]
    full: list[float] = []
    while not all(h.done() for h in handles):
        before = count[0]
        t0 = time.perf_counter()
        engine.step()
        dt_s = time.perf_counter() - t0
        if count[0] - before == batch and engine.sched.num_active == batch:
            full.append(dt_s)
    full.sort()
    med = full[len(full) // 2]
    return {
        "full_steps": len(full),
        "ms_per_step": round(med * 1e3, 3),
        "tokens_per_s": round(batch / med, 1),
    }


def engine_ttft(engine, n: int = 2048, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    from tnllm.engine.types import EngineRequest, SamplingParams

    times = []
    for r in range(reps + 1):
        first: list[float] = []
        ids = prompt(n, 100 + r)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        h = engine.submit(
            EngineRequest(f"ttft{r}", ids, SamplingParams(max_new_tokens=1)),
            lambda ev, first=first: first.append(time.perf_counter()),
        )
        while not h.done():
            engine.step()
        times.append(first[0] - t0)
    times = sorted(times[1:])  # the first run pays one-time allocations
    return times[len(times) // 2] * 1e3


def engine_context(engine, contexts=(1024, 32768), steps: int = 40) -> dict:  # type: ignore[no-untyped-def]
    """Batch-1 decode step (engine, graph) after a prompt of each context length."""
    from tnllm.engine.types import EngineRequest, SamplingParams

    out: dict = {}
    for ctx in contexts:
        stamps: list[float] = []
        h = engine.submit(
            EngineRequest(
                f"ctx{ctx}", prompt(ctx, ctx), SamplingParams(max_new_tokens=steps, ignore_eos=True)
            ),
            lambda ev, stamps=stamps: stamps.append(time.perf_counter()),
        )
        while not h.done():
            engine.step()
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps[1:]))
        out[str(ctx)] = round(gaps[len(gaps) // 2] * 1e3, 4)
    out["ratio"] = round(out[str(contexts[1])] / out[str(contexts[0])], 4)
    return out


def graph_times(runner, batches=(1, 64, 256)) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for b in batches:
        runner.load_inputs([5] * b, [100] * b, list(range(b)), runner.bucket(b))
        out[str(b)] = round(time_events(lambda b=b: runner.replay(b), iters=30, warmup=3), 4)
    return out


def variant_pass(model, engine, switch: Callable[[bool], None], batches: tuple[int, ...], steps: int) -> dict:  # type: ignore[no-untyped-def]
    """Graph replay and engine decode at ``batches`` rows with ``switch(False)`` applied (graphs
    recaptured), then ``switch(True)`` and the graphs recaptured again."""
    switch(False)
    engine.runner.prepare(max_batch=256)
    out: dict = {"graph_replay_ms": graph_times(engine.backend.runner, batches)}
    for b in batches:
        out[f"engine_decode_b{b}"] = engine_decode(engine, b, steps)
    switch(True)
    engine.runner.prepare(max_batch=256)
    return out


def profile_graphs(runner, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Per-kernel GPU time inside graph replays at batch 1, 64 and 256 (CUPTI sees kernels in graphs)."""
    from torch.profiler import ProfilerActivity, profile

    parts = []
    for b in (1, 64, 256):
        runner.load_inputs([5] * b, [100] * b, list(range(b)), runner.bucket(b))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                runner.replay(b)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60)
        parts.append(f"=== batch {b}: 5 graph replays ===\n{table}")
    path.write_text("\n".join(parts))


def baseline(model, new_tokens: int = 32, prompt_len: int = 64, reps: int = 2) -> dict:  # type: ignore[no-untyped-def]
    """HF generate with our model class, one request at a time, greedy (the tutorial's way)."""
    try:
        from tnllm.model.hf import TransnormerForCausalLMHF, TransnormerHFConfig
    except ImportError:
        return eager_baseline(model, new_tokens, prompt_len)
    hf = TransnormerForCausalLMHF(TransnormerHFConfig(**model.config.to_official_dict()), lm=model).eval()
    ids = torch.tensor([prompt(prompt_len, 7)], device="cuda")
    hf.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
    rates = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        rates.append((out.shape[1] - prompt_len) / (time.perf_counter() - t0))
    return {"tokens_per_s": round(sorted(rates)[len(rates) // 2], 2), "new_tokens": new_tokens}


def eager_baseline(model, new_tokens: int, prompt_len: int) -> dict:  # type: ignore[no-untyped-def]
    """Without tnllm/model/hf.py: the same loop HF generate runs (whole prompt, then one token at a
    a time through ``TransnormerLM.run``, eager, batch 1), on the model's generic CUDA ops."""
    ids = torch.tensor([prompt(prompt_len, 7)], device="cuda")

    def gen(n: int) -> int:
        states = [torch.zeros((1, *s), device="cuda") for s in model.state_shapes()]
        pos = torch.arange(prompt_len, device="cuda")[None]
        logits, states = model.run(ids, pos, states, step=False, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        for i in range(n - 1):
            p = torch.tensor([[prompt_len + i]], device="cuda")
            logits, states = model.run(tok, p, states, step=True, last_only=True)
            tok = logits[:, -1].argmax(-1, keepdim=True)
        return int(tok.item())

    gen(4)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen(new_tokens)
    rate = new_tokens / (time.perf_counter() - t0)
    return {
        "tokens_per_s": round(rate, 2),
        "new_tokens": new_tokens,
        "path": "TransnormerLM.run loop (hf.py absent)",
    }


def bf16_state_accuracy(backend, prompt_len: int = 512, steps: int = 256) -> dict:  # type: ignore[no-untyped-def]
    """Teacher-forced logits with a bf16 vs an fp32 state pool (same inputs, fast path, batch 1)."""
    fast = backend.fast
    pools = {dt: fast.new_state_pool(1, dtype=dt) for dt in (torch.float32, torch.bfloat16)}
    ids = torch.tensor(prompt(prompt_len, 11), device="cuda")
    outs = {dt: fast.prefill(ids, 0, p, 0) for dt, p in pools.items()}
    worst, agree = 0.0, 0
    for i in range(steps):
        a, b = outs[torch.float32], outs[torch.bfloat16]
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
        agree += int(a.argmax() == b.argmax())
        tok = a.argmax().reshape(1)
        pos = torch.tensor([prompt_len + i], device="cuda")
        slot = torch.zeros(1, dtype=torch.long, device="cuda")
        outs = {dt: fast.decode(tok, pos, p, slot)[0] for dt, p in pools.items()}
    return {"max_rel_logit_diff": round(worst, 5), "argmax_agree": f"{agree}/{steps}", "prompt": prompt_len}


def floors(model, bw: float) -> dict:  # type: ignore[no-untyped-def]
    weight = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lrpe" not in n)
    state = model.state_bytes_per_sequence()
    return {
        "weight_GB": round(weight / 1e9, 3),
        "state_MB_per_seq": round(state / 1e6, 2),
        "b1_tokens_per_s": round(bw / weight, 1),
        "b64_tokens_per_s": round(64 * bw / (weight + 64 * 2 * state), 1),
        "b256_tokens_per_s": round(256 * bw / (weight + 256 * 2 * state), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--micro", action="store_true", help="also run the kernel micro-benchmarks")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--profile", type=Path, help="write a per-kernel profile of graph replays here")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--bf16-state", action="store_true", help="also measure the bf16 state pool option")
    ap.add_argument("--compare-cublas", action="store_true", help="also run 64 rows with cuBLAS GEMMs")
    ap.add_argument(
        "--compare-torch-glu",
        action="store_true",
        help="also run 64 and 256 rows with torch's elementwise GLU product instead of our kernel",
    )
    ap.add_argument(
        "--compare-no-pdl",
        action="store_true",
        help="also run 1, 64 and 256 rows with programmatic dependent launch off",
    )
    args = ap.parse_args()
    from tnllm.engine import Engine
    from tnllm.engine.backend import FastBackend

    res: dict = {"env": env_info(), "copy_TBps": round(copy_bandwidth(), 3)}
    print(json.dumps(res), flush=True)
    if args.micro:
        res["micro"] = run_all()
    model = random_model()
    res["floors"] = floors(model, res["copy_TBps"] * 1e12)
    if not args.skip_baseline:
        res["baseline_hf_generate"] = baseline(model)
        print(json.dumps(res["baseline_hf_generate"]), flush=True)
    t0 = time.perf_counter()
    fast = FastBackend(model)
    engine = Engine(model, None, slots=256, prefill_token_budget=2048, max_context=40000, backend=fast)
    assert engine.runner.prepare(max_batch=256), "no fast path on this machine"
    res["startup_s"] = round(time.perf_counter() - t0, 1)
    runner = fast.runner
    res["graph_replay_ms"] = graph_times(runner)
    for b in (1, 64, 256):
        res[f"engine_decode_b{b}"] = engine_decode(engine, b, args.steps)
        print(b, json.dumps(res[f"engine_decode_b{b}"]), flush=True)
    res["engine_decode_b64_sampled"] = engine_decode(engine, 64, args.steps, sampled=True)
    # baseline in the same run: the same engine without the overlapped step (host work after each step)
    engine.overlap = False
    res["no_overlap"] = {f"engine_decode_b{b}": engine_decode(engine, b, args.steps) for b in (1, 64, 256)}
    res["no_overlap"]["engine_decode_b64_sampled"] = engine_decode(engine, 64, args.steps, sampled=True)
    engine.overlap = True
    print("no_overlap", json.dumps(res["no_overlap"]), flush=True)

    # same-run A/Bs: the engine with one fast-path choice switched off, then back on
    def fast_flag(name: str) -> Callable[[bool], None]:
        return lambda on: setattr(fast.fast, name, on)

    variants: list[tuple[str, Callable[[bool], None], tuple[int, ...]]] = []
    if args.compare_cublas:
        variants.append(("cublas_b64", fast_flag("skinny_gemm"), (64,)))
    if args.compare_torch_glu:
        variants.append(("torch_glu", fast_flag("glu_kernel"), (64, 256)))
    if args.compare_no_pdl:
        from tnllm.model.kernels import pdl

        res["pdl"] = pdl.enabled()
        variants.append(("no_pdl", pdl.set_enabled, (1, 64, 256)))
    for name, switch, batches in variants:
        res[name] = variant_pass(model, engine, switch, batches, args.steps)
        print(name, json.dumps(res[name]), flush=True)
    runner = fast.runner
    res["ttft_2048_ms"] = round(engine_ttft(engine), 2)
    res["context_step_ms"] = engine_context(engine)
    if args.profile:
        profile_graphs(runner, args.profile)
    if args.bf16_state:
        del engine, runner
        torch.cuda.empty_cache()
        engine = Engine(
            model, None, slots=256, prefill_token_budget=2048, max_context=40000,
            state_dtype=torch.bfloat16, backend=fast,
        )  # fmt: skip
        torch.cuda.empty_cache()
        engine.runner.prepare(max_batch=256)
        bf16: dict = {"graph_replay_ms": graph_times(fast.runner)}
        for b in (1, 64, 256):
            bf16[f"engine_decode_b{b}"] = engine_decode(engine, b, args.steps)
        bf16["accuracy_vs_fp32_state"] = bf16_state_accuracy(fast)
        res["bf16_state"] = bf16
        print(json.dumps(bf16), flush=True)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
