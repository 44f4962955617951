"""The same parity and batch-invariance checks on a CUDA device (skipped where there is none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.model.test_batch_invariance import LENGTHS, _alone, _prompts, _together
from tnllm.model import load_pretrained

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def cuda_tiny_a(tiny_a_path: Path):  # type: ignore[no-untyped-def]
    return load_pretrained(tiny_a_path, device="cuda", dtype=torch.float32)


def test_tiny_a_parity_on_cuda(cuda_tiny_a, tiny_a_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected = json.loads((tiny_a_path / "expected.json").read_text())
    for seq in expected["sequences"]:
        n = seq["length"]
        logits = cuda_tiny_a(torch.tensor([seq["input_ids"]], device="cuda"))[0].double().cpu()
        wanted = {n - 1: seq["logits_last"], **{int(k): v for k, v in seq["logits_at"].items()}}
        for pos, ref in wanted.items():
            assert (logits[pos] - torch.tensor(ref, dtype=torch.float64)).abs().max().item() <= 1e-4
        pool = cuda_tiny_a.new_state_pool(2)
        assert pool[0].device.type == "cuda"
        step = cuda_tiny_a.prefill(torch.tensor(seq["input_ids"], device="cuda"), 0, pool, 1)
        tokens: list[int] = []
        for i in range(len(seq["greedy"]["new_tokens"])):
            tokens.append(int(step.argmax()))
            ids, pos, slots = (torch.tensor([x], device="cuda") for x in (tokens[-1], n + i, 1))
            step = cuda_tiny_a.decode(ids, pos, pool, slots)[0]
        assert tokens == seq["greedy"]["new_tokens"]


def test_batch_invariance_on_cuda(tiny_checkpoint: Path) -> None:
    model = load_pretrained(tiny_checkpoint, device="cuda")
    prompts = _prompts(model.config.vocab_size)
    together, _, _ = _together(model, prompts)
    assert [_alone(model, p)[0] for p in prompts] == together
    assert len(together) == len(LENGTHS)


def test_bf16_on_cuda(tiny_checkpoint: Path) -> None:
    model = load_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16)
    pool = model.new_state_pool(1)
    logits = model.prefill(torch.arange(3, 40, device="cuda"), 0, pool, 0)
    assert torch.isfinite(logits.float()).all() and pool[0].dtype == torch.float32


def test_hf_generate_on_cuda(tiny_checkpoint: Path) -> None:
    from tests.model.test_hf import NEW, _own_greedy
    from tnllm.model.hf import TransnormerForCausalLMHF

    model = TransnormerForCausalLMHF.from_pretrained(tiny_checkpoint, device_map="cuda")
    prompt = [5, 17, 3, 98, 42, 7]
    out = model.generate(
        torch.tensor([prompt], device="cuda"),
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out[0, len(prompt) :].tolist() == _own_greedy(model.native, prompt, NEW)
