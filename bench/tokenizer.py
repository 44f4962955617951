"""Tokenizer costs on the request path: prompt encoding (API token counting) and streaming detokenisation.

Baselines measured in the same run: raw ``sentencepiece`` encode (what our special-token splitting
adds on top), and decoding the whole generated id list at every step (what the windowed
``IncrementalDecoder`` avoids).

    python -m bench.tokenizer [--size tiny|small] [--tokens 4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable

from tnllm.model.demo import SIZES
from tnllm.model.demo_tokenizer import corpus_lines, write_tokenizer_files
from tnllm.text.detok import IncrementalDecoder
from tnllm.text.tokenizer import Tokenizer


def _best(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(size: str, n_tokens: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp, SIZES[size].vocab_size)
        tok = Tokenizer.from_pretrained(tmp)
    text = "\n".join(corpus_lines())
    big = (text + "\n") * 20
    ids = tok.encode(big)
    t_enc = _best(lambda: tok.encode(big))
    t_sp = _best(lambda: tok.sp.encode(big))
    # a long prompt of about 8192 tokens, counted as the API does
    prompt_ids = (ids * (8192 // len(ids) + 1))[:8192]
    prompt = tok.decode(prompt_ids)
    t_count = _best(lambda: tok.count_tokens(prompt), repeat=20)

    stream = (ids * (n_tokens // len(ids) + 1))[:n_tokens]

    def incremental() -> str:
        dec = IncrementalDecoder(tok)
        out = "".join(dec.push(i) for i in stream)
        return out + dec.flush()

    def full_each_step() -> str:
        emitted = ""
        for k in range(1, len(stream) + 1):
            emitted = tok.decode(stream[:k])
        return emitted

    assert incremental() == tok.decode(stream)
    t_inc = _best(incremental, repeat=3)
    t_full = _best(full_each_step, repeat=1)
    return {
        "size": size,
        "vocab_size": tok.vocab_size,
        "encode_chars": len(big),
        "encode_tokens": len(ids),
        "encode_tokens_per_s": len(ids) / t_enc,
        "sp_encode_tokens_per_s": len(ids) / t_sp,
        "count_8192_token_prompt_ms": t_count * 1e3,
        "stream_tokens": n_tokens,
        "incremental_us_per_token": t_inc / n_tokens * 1e6,
        "full_decode_each_step_us_per_token": t_full / n_tokens * 1e6,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--tokens", type=int, default=4096, help="length of the streamed generation")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.size, args.tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        ("tokenizer", f"demo {result['size']} (vocab {result['vocab_size']})"),
        ("encode (ours)", f"{result['encode_tokens_per_s']:,.0f} tokens/s"),
        ("encode (raw sentencepiece, baseline)", f"{result['sp_encode_tokens_per_s']:,.0f} tokens/s"),
        ("count an 8192-token prompt", f"{result['count_8192_token_prompt_ms']:.2f} ms"),
        (
            f"stream {result['stream_tokens']} tokens: IncrementalDecoder",
            f"{result['incremental_us_per_token']:.1f} us/token",
        ),
        (
            f"stream {result['stream_tokens']} tokens: full decode each step (baseline)",
            f"{result['full_decode_each_step_us_per_token']:.1f} us/token",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
