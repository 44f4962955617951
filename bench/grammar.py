"""Per-step engine cost of ``response_format`` grammar masks, beside the same steps without a grammar.

For each batch size (default 1, 64, 256): that many concurrent greedy requests fill the engine
(EOS ignored), their prompts are prefilled, then ``--steps`` full-batch decode steps are timed; once
with a json_schema grammar on every row (a long string field, so no row can finish inside the
window) and once without. Also timed apart: llguidance filling the masks of that many matchers
(host, ``Grammars.masks``) and applying them to the logits on the device (``apply_bitmask``).

    python -m bench.grammar                                  # tiny demo model, CPU
    python -m bench.grammar --model small                    # the small demo model
    python -m bench.grammar --shapes 7b --device cuda --tokenizer /path/to/TransNormerLLM-7B

``--shapes 7b`` builds random bf16 weights of the 7B shapes on the device (as bench/gpu.py does);
its grammar uses the tokenizer of ``--tokenizer`` (a checkpoint folder; default the demo model's,
whose masks then cover only that tokenizer's ids). Prints one JSON object; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from tnllm.engine import Engine, EngineRequest, SamplingParams
from tnllm.engine.sampling import apply_bitmask

#: A grammar no row can finish inside the timed window: one long string.
SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 400}},
    "required": ["story"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model (eval, on the device) and the tokenizer the grammar builds on."""
    from tnllm.model import load_pretrained
    from tnllm.model.demo import write_demo_checkpoint
    from tnllm.text.tokenizer import load_tokenizer

    demo = None
    if args.model in ("tiny", "small") or args.tokenizer is None:
        size = args.model if args.model in ("tiny", "small") else "tiny"
        demo = write_demo_checkpoint(Path(tempfile.mkdtemp()) / size, size=size, seed=0)
    tokenizer = load_tokenizer(args.tokenizer or demo)
    if args.shapes == "7b":
        from bench.gpu import random_model

        return random_model(), tokenizer
    path = demo if args.model in ("tiny", "small") else args.model
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    return load_pretrained(path, device=args.device, dtype=dtype).eval(), tokenizer


def decode_steps(engine: Engine, rows: int, steps: int, grammar: bool, prompt_len: int) -> float:
    """Median seconds of one full-batch decode step of ``rows`` greedy requests."""
    g = torch.Generator().manual_seed(rows)
    extra = {"response_format": FORMAT} if grammar else {}
    for i in range(rows):
        prompt = torch.randint(3, min(engine.vocab_size, 1000), (prompt_len,), generator=g).tolist()
        params = SamplingParams.model_validate(
            {"max_new_tokens": steps + 8, "ignore_eos": True, "temperature": 0.0, **extra}
        )
        engine.submit(EngineRequest(f"b{rows}-{grammar}-{i}", prompt, params))
    while engine.sched.num_waiting or any(not s.output_ids for s in engine.sched.running.values()):
        engine.step()  # admission and prefill
    engine.step()
    times = []
    for _ in range(steps):
        sync(engine.device)
        t0 = time.perf_counter()
        engine.step()
        sync(engine.device)
        times.append(time.perf_counter() - t0)
    for i in range(rows):
        engine.cancel(f"b{rows}-{grammar}-{i}")
    while engine.sched.has_work or engine._pending is not None:
        engine.step()
    return statistics.median(times)


def mask_parts(engine: Engine, rows: int, reps: int = 20) -> dict[str, float]:
    """Median ms of filling ``rows`` masks (llguidance, host) and of applying them on the device."""
    params = SamplingParams.model_validate({"response_format": FORMAT})
    matchers = [engine.grammars.matcher(params) for _ in range(rows)]
    fill, apply = [], []
    logits = torch.randn(rows, engine.vocab_size, device=engine.device)
    for _ in range(reps):
        t0 = time.perf_counter()
        mask = engine.grammars.masks(matchers)
        t1 = time.perf_counter()
        apply_bitmask(logits, mask.to(engine.device, non_blocking=True))
        sync(engine.device)
        fill.append(t1 - t0)
        apply.append(time.perf_counter() - t1)
    return {"fill_ms": 1e3 * statistics.median(fill), "apply_ms": 1e3 * statistics.median(apply)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | small (demo models) | a checkpoint folder")
    ap.add_argument("--shapes", choices=["7b"], help="random bf16 weights of the 7B shapes (GPU)")
    ap.add_argument("--tokenizer", help="checkpoint folder whose tokenizer the grammar uses")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args)
    engine = Engine(
        model, tokenizer, slots=max(args.rows), prefill_token_budget=max(args.rows) * args.prompt_len
    )
    results = []
    for rows in args.rows:
        plain = decode_steps(engine, rows, args.steps, False, args.prompt_len)
        grammar = decode_steps(engine, rows, args.steps, True, args.prompt_len)
        results.append(
            {
                "rows": rows,
                "step_ms_plain": 1e3 * plain,
                "step_ms_grammar": 1e3 * grammar,
                "overhead_ms": 1e3 * (grammar - plain),
                **mask_parts(engine, rows),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
        "device": str(engine.device),
        "model": args.shapes or args.model,
        "vocab": engine.vocab_size,
        "tokenizer_vocab": tokenizer.vocab_size,
        "torch_threads": torch.get_num_threads(),
        "versions": {p: version(p) for p in ("torch", "llguidance")} | {"python": platform.python_version()},
        "results": results,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
