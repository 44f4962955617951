"""Engine test fixtures: the tiny demo checkpoint (official format + tokenizer), real loader, fp32 CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tnllm.engine import Engine, EngineRequest, SamplingParams


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Any:
    """The tiny model gains nothing from threads, and on a shared 2-core machine an OpenMP barrier
    waiting for a descheduled thread makes every small op slow: run this package on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine_model(demo_model_dir: Path) -> Any:
    from tnllm.model import load_pretrained

    return load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def engine_tokenizer(demo_model_dir: Path) -> Any:
    from tnllm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir)
    assert tok is not None, "the demo checkpoint ships a tokenizer"
    return tok


@pytest.fixture
def make_engine(engine_model: Any, engine_tokenizer: Any) -> Any:
    """Factory: a fresh engine (fresh slot pool) over the shared tiny model."""

    def make(slots: int = 8, budget: int = 64, max_context: int = 4096, tokenizer: bool = True) -> Engine:
        return Engine(
            engine_model,
            engine_tokenizer if tokenizer else None,
            slots=slots,
            prefill_token_budget=budget,
            max_context=max_context,
        )

    return make


def greedy(prompt: list[int], n: int, rid: str = "r", **kw: Any) -> EngineRequest:
    """A greedy request that ignores EOS unless told otherwise."""
    kw.setdefault("ignore_eos", True)
    return EngineRequest(rid, prompt, SamplingParams(max_new_tokens=n, temperature=0.0, **kw))


def prompts(n: int, vocab: int, seed: int = 0, min_len: int = 1, max_len: int = 40) -> list[list[int]]:
    """n reproducible random prompts of varied lengths over ids 3..vocab-1 (no specials)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]
