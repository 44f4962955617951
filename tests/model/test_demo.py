"""Demo checkpoints: official files, loadable like a download, deterministic, varied greedy output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tnllm.cli.main import main
from tnllm.model import load_pretrained
from tnllm.model.config import TransnormerConfig
from tnllm.model.demo import MARKER_FILE, is_demo_checkpoint, write_demo_checkpoint
from tnllm.model.demo_tokenizer import corpus_lines
from tnllm.text.tokenizer import Tokenizer

OFFICIAL_FILES = {
    "config.json",
    "generation_config.json",
    "pytorch_model.bin",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def _greedy(model: torch.nn.Module, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + out]))
            out.append(int(logits[0, -1].argmax()))
    return out


def test_tiny_demo_has_the_official_files(demo_model_dir: Path) -> None:
    names = {p.name for p in demo_model_dir.iterdir()}
    assert OFFICIAL_FILES | {MARKER_FILE} == names
    raw = json.loads((demo_model_dir / "config.json").read_text())
    assert raw["architectures"] == ["TransnormerForCausalLM"]
    assert (raw["pad_token_id"], raw["bos_token_id"], raw["eos_token_id"]) == (0, 1, 2)
    assert raw["linear_use_lrpe_list"] == [1, 0]
    tok_config = json.loads((demo_model_dir / "tokenizer_config.json").read_text())
    assert tok_config["add_bos_token"] is False and tok_config["add_eos_token"] is False
    assert is_demo_checkpoint(demo_model_dir)


def test_tiny_demo_loads_like_a_download_with_matching_vocab(demo_model_dir: Path) -> None:
    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32)
    tok = Tokenizer.from_pretrained(demo_model_dir)
    config = TransnormerConfig.from_file(demo_model_dir)
    assert config.vocab_size == tok.vocab_size == 1024
    assert (config.decoder_embed_dim, config.decoder_layers, config.decoder_attention_heads) == (64, 2, 4)
    assert (tok.bos_id, tok.eos_id) == (config.bos_token_id, config.eos_token_id)
    ids = tok.encode("你好, world 😀")
    logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), tok.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_demo_greedy_output_varies(demo_model_dir: Path) -> None:
    model = load_pretrained(demo_model_dir, device="cpu", dtype=torch.float32)
    tok = Tokenizer.from_pretrained(demo_model_dir)
    prompts = ["你好", "Hello, world!", "def f(x):", "The quick brown fox"]
    outs = [_greedy(model, tok.encode(p), 8) for p in prompts]
    assert len({tuple(o) for o in outs}) == len(prompts), outs
    for out in outs:
        assert len(set(out)) >= 4, out  # not one repeated token


def test_demo_tokenizer_round_trips_the_whole_corpus(demo_model_dir: Path) -> None:
    tok = Tokenizer.from_pretrained(demo_model_dir)
    lines = corpus_lines()
    assert len(lines) >= 300
    text = "\n".join(lines)
    assert tok.decode(tok.encode(text)) == text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text) and "def " in text


def test_same_seed_same_checkpoint_other_seed_other_weights(demo_model_dir: Path, tmp_path: Path) -> None:
    again = write_demo_checkpoint(tmp_path / "again", seed=0)
    other = write_demo_checkpoint(tmp_path / "other", seed=1)
    for name in ("tokenizer.model", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (demo_model_dir / name).read_bytes()
        assert (other / name).read_bytes() == (demo_model_dir / name).read_bytes()

    def weights(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path / "pytorch_model.bin", weights_only=True)

    base, same, diff = weights(demo_model_dir), weights(again), weights(other)
    assert base.keys() == same.keys() == diff.keys()
    assert all(torch.equal(base[k], same[k]) for k in base)
    assert not torch.equal(base["model.embed_tokens.weight"], diff["model.embed_tokens.weight"])


def test_rewrite_replaces_weights_of_another_layout(tmp_path: Path) -> None:
    out = write_demo_checkpoint(tmp_path / "demo")
    (out / "pytorch_model.bin.index.json").write_text("{}")
    (out / "pytorch_model-00001-of-00002.bin").write_bytes(b"stale")
    (out / "model-notes.txt").write_text("not a weight file: kept")
    write_demo_checkpoint(out)
    assert {p.name for p in out.iterdir()} == OFFICIAL_FILES | {MARKER_FILE, "model-notes.txt"}
    load_pretrained(out)


def test_a_real_checkpoint_is_never_overwritten(demo_model_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "downloaded"
    real.mkdir()
    (real / "config.json").write_text((demo_model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="not a demo"):
        write_demo_checkpoint(real)
    assert main(["demo-model", str(real)]) == 1
    assert [p.name for p in real.iterdir()] == ["config.json"]


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo size"):
        write_demo_checkpoint(tmp_path / "x", size="huge")
    assert not (tmp_path / "x").exists()


def test_cli_demo_model_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tnllm demo-model DIR --size small` writes a tens-of-millions-parameter checkpoint."""
    out = tmp_path / "small"
    assert main(["demo-model", str(out), "--size", "small", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    model = load_pretrained(out)
    tok = Tokenizer.from_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    assert 10_000_000 < params < 100_000_000
    assert model.config.vocab_size == tok.vocab_size == 4096
    outs = {tuple(_greedy(model, tok.encode(p), 4)) for p in ("你好", "hello", "import json")}
    assert len(outs) == 3
