"""Loader: every file format, dtype handling and every error case, on real files (no mocks)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest
import torch

from tests.fixtures.model import tiny_config, write_tiny_checkpoint
from tnllm.errors import CheckpointError, ConfigError
from tnllm.model.checkpoint_io import random_state_dict, save_official_checkpoint
from tnllm.model.loading import load_pretrained

IDS = torch.tensor([[5, 17, 3, 98, 42, 0, 7, 61]])
SHARD = 20_000  # bytes: the tiny model (~40 kB of fp32 weights per layer) splits into several shards


@pytest.fixture(scope="module")
def reference_logits(tiny_model) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return tiny_model(IDS)


@pytest.mark.parametrize(
    ("fmt", "shard", "files"),
    [
        ("bin", None, ["pytorch_model.bin"]),
        ("bin", SHARD, ["pytorch_model.bin.index.json", "pytorch_model-00001-of-"]),
        ("safetensors", None, ["model.safetensors"]),
        ("safetensors", SHARD, ["model.safetensors.index.json", "model-00001-of-"]),
    ],
    ids=["bin", "bin-sharded", "safetensors", "safetensors-sharded"],
)
def test_every_format_loads_the_same_model(tmp_path: Path, reference_logits, fmt, shard, files) -> None:  # type: ignore[no-untyped-def]
    path = write_tiny_checkpoint(tmp_path, fmt=fmt, max_shard_bytes=shard)
    names = sorted(p.name for p in path.iterdir())
    for prefix in files:
        assert any(n.startswith(prefix) for n in names), names
    if shard:
        index = json.loads((path / files[0]).read_text())
        assert len(set(index["weight_map"].values())) > 2
        assert index["metadata"]["total_size"] > 0
    assert torch.equal(load_pretrained(path)(IDS), reference_logits)


def test_bin_keeps_tied_head_as_shared_storage(tiny_checkpoint: Path) -> None:
    sd = torch.load(tiny_checkpoint / "pytorch_model.bin", weights_only=True)
    assert (
        sd["lm_head.weight"].untyped_storage().data_ptr()
        == sd["model.embed_tokens.weight"].untyped_storage().data_ptr()
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16])
def test_half_precision_load(tiny_checkpoint: Path, reference_logits, dtype) -> None:  # type: ignore[no-untyped-def]
    model = load_pretrained(tiny_checkpoint, dtype=dtype)
    want = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == want
    assert model.model.layers[0].token_mixer.lrpe.theta.dtype == torch.float32  # positions stay exact
    logits = model(IDS).float()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    assert agree >= 0.75
    pool = model.new_state_pool(1)
    assert pool[0].dtype == torch.float32
    model.prefill(IDS[0], 0, pool, 0)
    assert torch.isfinite(pool[-1]).all()


def test_bf16_checkpoint_loads_in_fp32(tmp_path: Path, reference_logits) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config()
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(config, 0).items()}
    model = load_pretrained(save_official_checkpoint(sd, config, tmp_path), dtype=torch.float32)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.model.embed_tokens.weight, sd["model.embed_tokens.weight"].float())


def test_untied_head_is_loaded(tmp_path: Path) -> None:
    config = tiny_config(tie_word_embeddings=False)
    sd = random_state_dict(config, 0)
    model = load_pretrained(save_official_checkpoint(sd, config, tmp_path, fmt="safetensors"))
    assert model.lm_head is not None and torch.equal(model.lm_head.weight, sd["lm_head.weight"])


def test_separate_but_equal_head_is_accepted(tmp_path: Path) -> None:
    config = tiny_config()
    sd = random_state_dict(config, 0)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    sd["decoder.version"] = torch.zeros(1)  # ignored, as by the official class
    load_pretrained(save_official_checkpoint(sd, config, tmp_path))


# ---- errors ------------------------------------------------------------------------------------
def _write(tmp_path: Path, sd: dict, fmt: str = "bin", shard: int | None = None, **overrides) -> Path:  # type: ignore[no-untyped-def]
    return save_official_checkpoint(sd, tiny_config(**overrides), tmp_path, fmt, shard)


def _sd() -> dict[str, torch.Tensor]:
    return random_state_dict(tiny_config(), 0)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_missing_tensor(tmp_path: Path, fmt: str) -> None:
    sd = _sd()
    del sd["model.layers.1.channel_mixer.l2.weight"]
    with pytest.raises(
        CheckpointError, match=r"missing tensors: model\.layers\.1\.channel_mixer\.l2\.weight"
    ):
        load_pretrained(_write(tmp_path, sd, fmt))


def test_missing_embedding_of_untied_head(tmp_path: Path) -> None:
    config = tiny_config(tie_word_embeddings=False)
    sd = random_state_dict(config, 0)
    del sd["lm_head.weight"]
    with pytest.raises(CheckpointError, match=re.escape("missing tensors: lm_head.weight")):
        load_pretrained(save_official_checkpoint(sd, config, tmp_path))


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_unexpected_tensor(tmp_path: Path, fmt: str) -> None:
    sd = _sd()
    sd["model.layers.1.token_mixer.lrpe.theta"] = torch.zeros(4, 1, 8)  # layer 1 has no LRPE
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'model\.layers\.1\.token_mixer\.lrpe\.theta'"
    ) as err:
        load_pretrained(_write(tmp_path, sd, fmt))
    assert "pytorch_model.bin" in str(err.value) or "model.safetensors" in str(err.value)


def test_wrong_shape(tmp_path: Path) -> None:
    sd = _sd()
    sd["model.layers.2.channel_mixer.l1.weight"] = torch.zeros(36, 32)
    with pytest.raises(
        CheckpointError, match=r"l1\.weight' has shape \[36, 32\], the config needs \[37, 32\]"
    ):
        load_pretrained(_write(tmp_path, sd, shard=SHARD))


def test_non_float_tensor(tmp_path: Path) -> None:
    sd = _sd()
    sd["model.layers.0.token_mixer.out_proj.weight"] = torch.zeros(32, 32, dtype=torch.int64)
    with pytest.raises(CheckpointError, match=re.escape("out_proj.weight' has dtype torch.int64")):
        load_pretrained(_write(tmp_path, sd))


def test_head_differing_from_tied_embedding(tmp_path: Path) -> None:
    sd = _sd()
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1
    with pytest.raises(
        CheckpointError, match=re.escape("'lm_head.weight' differs from 'model.embed_tokens.weight'")
    ):
        load_pretrained(_write(tmp_path, sd))


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_truncated_shard(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, _sd(), fmt, SHARD)
    shard = sorted(p for p in path.iterdir() if "-00002-of-" in p.name)[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_pretrained(path)
    assert shard.name in str(err.value)


def test_truncated_single_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd())
    f = path / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read weights"):
        load_pretrained(path)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_missing_shard(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, _sd(), fmt, SHARD)
    shard = sorted(p for p in path.iterdir() if "-00002-of-" in p.name)[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard {shard.name} is missing"):
        load_pretrained(path)


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd(), "bin", SHARD)
    extra = {"model.embed_tokens.weight": torch.zeros(99, 32)}
    torch.save(extra, path / "pytorch_model-extra.bin")
    index = json.loads((path / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["zzz"] = "pytorch_model-extra.bin"
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=re.escape("'model.embed_tokens.weight' appears again")):
        load_pretrained(path)


def test_bad_index(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd(), "safetensors", SHARD)
    (path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(
        CheckpointError, match=re.escape("model.safetensors.index.json: not a valid shard index")
    ):
        load_pretrained(path)


def test_other_architecture(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd())
    (path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    with pytest.raises(ConfigError, match=re.escape("config.json: model_type 'llama'")):
        load_pretrained(path)


def test_config_disagreeing_with_weights(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd())
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "glu_dim": 40}))
    with pytest.raises(CheckpointError, match=r"channel_mixer\.l1\.weight' has shape \[37, 32\]"):
        load_pretrained(path)


def test_file_needing_more_than_tensors_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd())
    torch.save({**_sd(), "saved_at": datetime.datetime(2024, 1, 1)}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="needs more than plain tensors"):
        load_pretrained(path)


def test_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = _write(tmp_path, _sd())
    torch.save(list(_sd().values()), path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="expected a flat dict of tensors"):
        load_pretrained(path)


def test_folder_problems(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(ConfigError, match=re.escape("no config.json")):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_official_dict()))
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_pretrained(tmp_path, dtype="int8")


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_streamed_sharded_write_loads_like_a_dict_write(tmp_path: Path, reference_logits, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Tensors of earlier shards are freed while streaming; their reused addresses are not 'shared'."""
    from tnllm.model.checkpoint_io import iter_random_tensors

    config = tiny_config()
    path = save_official_checkpoint(iter_random_tensors(config, 0), config, tmp_path, fmt, 6_000)
    assert len(list(path.glob("*-of-*"))) > 5
    assert torch.equal(load_pretrained(path)(IDS), reference_logits)
