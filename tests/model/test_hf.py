"""transformers integration: Auto classes without trust_remote_code, generate() == our own decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tnllm.model.hf import TransnormerForCausalLMHF, TransnormerHFConfig, register_with_transformers

transformers = pytest.importorskip("transformers")
NEW = 10


@pytest.fixture(scope="module")
def hf_model(tiny_checkpoint: Path) -> TransnormerForCausalLMHF:
    register_with_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert isinstance(model, TransnormerForCausalLMHF)
    return model


def _own_greedy(lm, prompt: list[int], steps: int) -> list[int]:  # type: ignore[no-untyped-def]
    pool = lm.new_state_pool(1)
    logits = lm.prefill(torch.tensor(prompt), 0, pool, 0)
    out: list[int] = []
    for i in range(steps):
        out.append(int(logits.argmax()))
        logits = lm.decode(torch.tensor(out[-1:]), torch.tensor([len(prompt) + i]), pool, torch.tensor([0]))[
            0
        ]
    return out


def _greedy(model, ids: torch.Tensor, **kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return model.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0, **kw)


def test_registration_is_explicit(tmp_path: Path) -> None:
    code = (
        "import tnllm.model.hf\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert 'transnormer' not in CONFIG_MAPPING, 'registered on import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])


def test_auto_classes_resolve_to_ours(hf_model, tiny_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    config = transformers.AutoConfig.from_pretrained(tiny_checkpoint)
    assert isinstance(config, TransnormerHFConfig) and config.num_hidden_layers == 3
    ids = torch.tensor([[5, 17, 3, 98, 42]])
    assert torch.equal(hf_model(ids).logits, hf_model.native(ids))
    loss = hf_model(ids, labels=ids).loss
    assert loss is not None and torch.isfinite(loss)


def test_greedy_generate_equals_own_decoding(hf_model) -> None:  # type: ignore[no-untyped-def]
    prompt = [5, 17, 3, 98, 42, 7]
    out = _greedy(hf_model, torch.tensor([prompt]))
    assert out[0, len(prompt) :].tolist() == _own_greedy(hf_model.native, prompt, NEW)


def test_official_fixture_greedy_through_generate(tiny_a_path: Path) -> None:
    register_with_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_a_path)
    expected = json.loads((tiny_a_path / "expected.json").read_text())
    for seq in expected["sequences"][1:4]:
        want = seq["greedy"]["new_tokens"]
        out = model.generate(
            torch.tensor([seq["input_ids"]]),
            max_new_tokens=len(want),
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert out[0, seq["length"] :].tolist() == want


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_alone(hf_model, side: str) -> None:  # type: ignore[no-untyped-def]
    prompts = [[5, 17, 3], [9, 8, 7, 6, 5, 4, 3], [40]]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        cols = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        ids[row, cols] = torch.tensor(p)
        mask[row, cols] = 1
    out = _greedy(hf_model, ids, attention_mask=mask)
    for row, p in enumerate(prompts):
        assert out[row, width:].tolist() == _own_greedy(hf_model.native, p, NEW), f"row {row}"


def test_sampling_equals_own_sampling(hf_model) -> None:  # type: ignore[no-untyped-def]
    prompt = [11, 12, 13]
    torch.manual_seed(123)
    out = hf_model.generate(
        torch.tensor([prompt]),
        max_new_tokens=NEW,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=0.7,
        eos_token_id=None,
        pad_token_id=0,
    )
    lm = hf_model.native
    pool = lm.new_state_pool(1)
    logits = lm.prefill(torch.tensor(prompt), 0, pool, 0)
    torch.manual_seed(123)
    own: list[int] = []
    for i in range(NEW):
        probs = torch.softmax(logits.float()[None] / 0.7, dim=-1)
        own.append(int(torch.multinomial(probs, num_samples=1)[0, 0]))
        logits = lm.decode(torch.tensor(own[-1:]), torch.tensor([len(prompt) + i]), pool, torch.tensor([0]))[
            0
        ]
    assert out[0, len(prompt) :].tolist() == own


def test_beam_search_runs(hf_model) -> None:  # type: ignore[no-untyped-def]
    out = _greedy(hf_model, torch.tensor([[5, 17, 3]]), num_beams=3)
    assert out.shape == (1, 3 + NEW)


def test_config_without_model_type_loads_directly(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for f in tiny_checkpoint.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["model_type"]  # like the released 7B config.json
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = TransnormerForCausalLMHF.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert model.native.dtype == torch.bfloat16
    assert _greedy(model, torch.tensor([[5, 6]])).shape == (1, 2 + NEW)
