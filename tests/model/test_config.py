"""Reading the official config.json: recognition, defaults, validation, round trip (docs/MODEL_SPEC.md §2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tnllm.errors import CheckpointError, ConfigError
from tnllm.model.checkpoint_io import expected_shapes
from tnllm.model.config import TransnormerConfig
from tnllm.model.modeling import TransnormerLM

# The released 7B config.json (docs/MODEL_SPEC.md §2.1): no model_type, no tie_word_embeddings.
CONFIG_7B = {
    "architectures": ["TransnormerForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_transnormer.TransnormerConfig",
        "AutoModelForCausalLM": "modeling_transnormer.TransnormerForCausalLM",
    },
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "vocab_size": 64000,
    "use_cache": True,
    "init_std": 0.02,
    "decoder_embed_dim": 4096,
    "decoder_layers": 30,
    "decoder_attention_heads": 32,
    "no_scale_embedding": True,
    "add_bos_token": False,
    "norm_type": "simplermsnorm",
    "linear_use_lrpe_list": [1] + [0] * 29,
    "hidden_dim": 4096,
    "linear_act_fun": "swish",
    "glu_dim": 11008,
    "bias": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.32.0",
    "model_max_length": 8192,
}


def test_released_7b_config_is_recognised_and_tied() -> None:
    cfg = TransnormerConfig.from_dict(CONFIG_7B)
    assert cfg.tie_word_embeddings and cfg.embed_scale == 1.0 and cfg.head_dim == 128 and cfg.ffn_dim == 11008
    assert cfg.lrpe_layers == (True,) + (False,) * 29


def test_7b_sizes_match_spec() -> None:
    cfg = TransnormerConfig.from_dict(CONFIG_7B)
    shapes = expected_shapes(cfg)
    assert len(shapes) + 1 == 153  # + lm_head.weight, which is the embedding
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 6_836_719_616
    assert shapes["model.layers.0.token_mixer.lrpe.theta"] == (32, 1, 128)
    with torch.device("meta"):
        model = TransnormerLM(cfg)
    assert model.state_bytes_per_sequence() == 65_011_712
    assert model.state_bytes_per_sequence(torch.bfloat16) == 32_505_856
    assert model.state_shapes()[:2] == [(32, 256, 128), (32, 128, 128)]


def test_1b_scales_embeddings() -> None:
    raw = {**CONFIG_7B, "decoder_embed_dim": 2048, "hidden_dim": 2048, "decoder_layers": 16}
    raw.update(
        decoder_attention_heads=16,
        glu_dim=5632,
        no_scale_embedding=False,
        linear_use_lrpe_list=[1] + [0] * 15,
    )
    assert TransnormerConfig.from_dict(raw).embed_scale == pytest.approx(2048**0.5)


@pytest.mark.parametrize(
    "raw",
    [
        {"model_type": "transnormer"},
        {"architectures": ["TransnormerForCausalLM"]},
        {"auto_map": {"AutoConfig": "configuration_transnormer.TransnormerConfig"}},
        {
            "decoder_embed_dim": 64,
            "decoder_layers": 2,
            "decoder_attention_heads": 4,
            "glu_dim": 96,
            "hidden_dim": 64,
        },
    ],
    ids=["model_type", "architectures", "auto_map", "keys"],
)
def test_recognised_by_any_marker(raw: dict) -> None:
    assert TransnormerConfig.from_dict(raw).vocab_size == 64000  # official defaults fill the rest


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"model_type": "llama", "hidden_size": 4096}, "'llama'"),
        ({"architectures": ["LlamaForCausalLM"], "decoder_layers": 2}, "LlamaForCausalLM"),
        ({"hidden_size": 4096, "num_hidden_layers": 2}, "not a TransNormerLLM config"),
    ],
)
def test_other_architecture_refused_naming_the_file(tmp_path: Path, raw: dict, needle: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=needle) as err:
        TransnormerConfig.from_file(tmp_path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"decoder_layers": 1, "linear_use_lrpe_list": [0]}, ">= 2"),
        ({"hidden_dim": 30}, "not divisible"),
        ({"hidden_dim": 24}, "LRPE needs hidden_dim == decoder_embed_dim"),
        ({"linear_use_lrpe_list": [1]}, "1 flags for 3 layers"),
        ({"glu_dim": 0}, "glu_dim"),
        ({"vocab_size": "many"}, "vocab_size"),
    ],
)
def test_bad_values_are_clear_errors(changes: dict, needle: str) -> None:
    from tests.fixtures.model import TINY_CONFIG

    with pytest.raises(ConfigError, match=needle):
        TransnormerConfig.from_dict({**TINY_CONFIG, **changes}, source="x/config.json")


def test_keys_and_defaults() -> None:
    base = {"model_type": "transnormer", "decoder_layers": 3}
    cfg = TransnormerConfig.from_dict({**base, "glu_dim": -1, "decoder_embed_dim": 48, "hidden_dim": 48})
    assert cfg.ffn_dim == 48
    legacy = TransnormerConfig.from_dict({**base, "linear_use_lrpe_list": [], "linear_use_lrpe": 1})
    assert legacy.lrpe_layers == (True, True, True)
    assert TransnormerConfig.from_dict(base).lrpe_layers == ()
    assert TransnormerConfig.from_dict({**base, "tie_word_embeddings": False}).tie_word_embeddings is False
    assert TransnormerConfig.from_dict({**base, "eos_token_id": [2, 7]}).eos_ids == (2, 7)
    assert TransnormerConfig.from_dict({**base, "some_future_key": 1, "linear_use_lrpe": 0}).num_layers == 3
    longer = TransnormerConfig.from_dict({**base, "linear_use_lrpe_list": [1, 0, 1, 1]})
    assert longer.lrpe_layers == (True, False, True)


def test_official_dict_round_trip() -> None:
    cfg = TransnormerConfig.from_dict(CONFIG_7B)
    out = cfg.to_official_dict()
    assert out["architectures"] == ["TransnormerForCausalLM"] and out["model_type"] == "transnormer"
    assert "tie_word_embeddings" not in out and out["auto_map"] == CONFIG_7B["auto_map"]
    assert TransnormerConfig.from_dict(json.loads(json.dumps(out))) == cfg
    untied = cfg.with_updates(tie_word_embeddings=False)
    assert untied.to_official_dict()["tie_word_embeddings"] is False
