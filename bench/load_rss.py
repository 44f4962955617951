#!/usr/bin/env python3
"""Peak host RSS while loading a random TransNormerLLM checkpoint in bf16 (issue 2, "Loading").

Writes a random 7B-shaped (or 1B-shaped) checkpoint as sharded ``pytorch_model-*.bin`` files, one
shard at a time in a child process (never the whole model in RAM), then loads it with
``tnllm.model.load_pretrained(path, "cpu", torch.bfloat16)`` in a fresh child process and reports
that child's peak RSS (``ru_maxrss``) right after loading and after a one-token forward pass, which
touches every weight (the mmap-backed weights are then all resident). The files are deleted at the
end unless ``--keep``.

    python -m bench.load_rss                 # 7B if >= 20 GB RAM is available, else 1B
    python -m bench.load_rss --size 1b --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3

SIZES = {  # the released configs (docs/MODEL_SPEC.md §2.1)
    "7b": {"decoder_embed_dim": 4096, "hidden_dim": 4096, "decoder_layers": 30, "decoder_attention_heads": 32,
           "glu_dim": 11008, "no_scale_embedding": True},
    "1b": {"decoder_embed_dim": 2048, "hidden_dim": 2048, "decoder_layers": 16, "decoder_attention_heads": 16,
           "glu_dim": 5632, "no_scale_embedding": False},
}  # fmt: skip
SHARD_BYTES = {"7b": 5_000_000_000, "1b": 1_000_000_000}  # 7B: three shards, like the released files


def _config(size: str) -> dict:
    base = {"architectures": ["TransnormerForCausalLM"], "vocab_size": 64000, "linear_act_fun": "swish"}
    raw = {**base, **SIZES[size]}
    raw["linear_use_lrpe_list"] = [1] + [0] * (raw["decoder_layers"] - 1)
    raw["torch_dtype"] = "bfloat16"
    return raw


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _child_write(out: str, size: str) -> None:
    import torch

    from tnllm.model.checkpoint_io import iter_random_tensors, save_official_checkpoint
    from tnllm.model.config import TransnormerConfig

    config = TransnormerConfig.from_dict(_config(size))
    tensors = iter_random_tensors(config, seed=0, std=0.02, dtype=torch.bfloat16)
    save_official_checkpoint(tensors, config, out, fmt="bin", max_shard_bytes=SHARD_BYTES[size])


def _child_load(path: str) -> None:
    import resource

    import torch

    from tnllm.model import load_pretrained

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    before = peak()
    started = time.perf_counter()
    model = load_pretrained(path, device="cpu", dtype=torch.bfloat16)
    load_s = time.perf_counter() - started
    after_load = peak()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model(torch.tensor([[1]]))
    print(json.dumps({"rss_before_load": before, "peak_after_load": after_load, "peak_after_forward": peak(),
                      "param_bytes": weight_bytes, "load_seconds": round(load_s, 2)}))  # fmt: skip


def _run_child(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.load_rss", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["auto", "7b", "1b"], default="auto")
    parser.add_argument("--dir", help="where to write the checkpoint (default: a temp folder under the repo)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child-write", nargs=2, metavar=("DIR", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-load", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_write:
        _child_write(*args.child_write)
        return 0
    if args.child_load:
        _child_load(args.child_load)
        return 0

    available = _available_bytes()
    size = args.size if args.size != "auto" else ("7b" if available >= 20 * GIB else "1b")
    out = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="load-rss-", dir=ROOT))
    try:
        started = time.perf_counter()
        _run_child("--child-write", str(out), size)
        write_s = time.perf_counter() - started
        index = json.loads((out / "pytorch_model.bin.index.json").read_text())
        file_bytes = sum(f.stat().st_size for f in out.glob("pytorch_model-*.bin"))
        result = json.loads(_run_child("--child-load", str(out)).strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    weights = index["metadata"]["total_size"]
    result.update(
        size=size, mem_available_at_start=available, shards=len(set(index["weight_map"].values())),
        weight_bytes=weights, file_bytes=file_bytes, write_seconds=round(write_s, 1),
        ratio_after_load=round(result["peak_after_load"] / weights, 3),
        ratio_after_forward=round(result["peak_after_forward"] / weights, 3),
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        head = f"{size.upper()}-shaped random bf16 checkpoint: {result['shards']} shards"
        print(f"{head}, {weights / GIB:.2f} GiB weights")
        print(f"{'stage':<34}{'peak RSS GiB':>14}{'x weights':>11}")
        rows = [
            ("before load (python + torch)", result["rss_before_load"], ""),
            ("after load_pretrained (bf16, cpu)", result["peak_after_load"], result["ratio_after_load"]),
            ("after a forward (all touched)", result["peak_after_forward"], result["ratio_after_forward"]),
        ]
        for name, rss, ratio in rows:
            print(f"{name:<34}{rss / GIB:>14.2f}{ratio:>11}")
        print(f"load {result['load_seconds']} s, write {result['write_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
