"""Per-step engine cost of ``response_format`` grammar masks, beside the same steps without a grammar.

For each batch size (default 1, 64, 256): that many concurrent greedy requests fill the engine
(EOS ignored), their prompts are prefilled, then ``--steps`` full-batch decode steps are timed; with
a json_schema grammar on every row (a long string field, so no row can finish inside the window)
and without, ``--repeats`` times each, interleaved; the medians over all timed steps are reported,
with the mean time per grammar step inside llguidance's mask fill (``Grammars.masks``, host) and,
timed apart, applying that many masks to the logits on the device (``apply_bitmask``).

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


class MaskClock:
    """Time spent inside ``engine.grammars.masks`` (llguidance filling this step's masks)."""

    def __init__(self, engine: Engine) -> None:
        self.seconds = 0.0
        self._masks = engine.grammars.masks
        engine.grammars.masks = self  # type: ignore[method-assign]

    def __call__(self, matchers: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return self._masks(matchers)
        finally:
            self.seconds += time.perf_counter() - t0


def decode_steps(
    engine: Engine, rows: int, steps: int, grammar: bool, prompt_len: int, clock: MaskClock
) -> tuple[list[float], float]:
    """Seconds of each of ``steps`` full-batch decode steps of ``rows`` greedy requests, and the
    seconds of those steps spent in llguidance's mask fill."""
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
    before = clock.seconds
    for _ in range(steps):
        sync(engine.device)
        t0 = time.perf_counter()
        engine.step()
        sync(engine.device)
        times.append(time.perf_counter() - t0)
    fill = clock.seconds - before
    for i in range(rows):
        engine.cancel(f"b{rows}-{grammar}-{i}")
    while engine.sched.has_work or engine._pending is not None:
        engine.step()
    return times, fill


def apply_ms(engine: Engine, rows: int, reps: int = 20) -> float:
    """Median ms of applying ``rows`` grammar masks to the logits on the device (``apply_bitmask``)."""
    width = (engine.vocab_size + 31) // 32
    mask = torch.randint(-(2**31), 2**31 - 1, (rows, width), dtype=torch.int32, device=engine.device)
    logits = torch.randn(rows, engine.vocab_size, device=engine.device)
    took = []
    for _ in range(reps):
        sync(engine.device)
        t0 = time.perf_counter()
        apply_bitmask(logits, mask)
        sync(engine.device)
        took.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(took)


def measure(engine: Engine, rows: int, args: argparse.Namespace, clock: MaskClock) -> dict[str, float]:
    """One table row: plain and grammar steps of ``rows`` requests, interleaved ``args.repeats`` times."""
    times: dict[bool, list[float]] = {False: [], True: []}
    fill = 0.0
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits both
        for grammar_on in (False, True):
            took, filled = decode_steps(engine, rows, args.steps, grammar_on, args.prompt_len, clock)
            times[grammar_on] += took
            fill += filled
    plain, grammar = statistics.median(times[False]), statistics.median(times[True])
    return {
        "rows": rows,
        "step_ms_plain": 1e3 * plain,
        "step_ms_grammar": 1e3 * grammar,
        "overhead_ms": 1e3 * (grammar - plain),
        "engine_fill_ms": 1e3 * fill / len(times[True]),  # mean over the grammar steps
        "apply_ms": apply_ms(engine, rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | small (demo models) | a checkpoint folder")
    ap.add_argument("--shapes", choices=["7b"], help="random bf16 weights of the 7B shapes (GPU)")
    ap.add_argument("--tokenizer", help="checkpoint folder whose tokenizer the grammar uses")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="plain/grammar runs, interleaved")
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
    clock = MaskClock(engine)
    for rows in args.rows:
        results.append(measure(engine, rows, args, clock))
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
