"""Demo checkpoints: random TransNormerLLM weights plus a real tokenizer, in the official file format.

``tnllm demo-model DIR`` writes one; ``--model demo`` serves one. The folder holds what a downloaded
checkpoint holds (config.json, generation_config.json, pytorch_model.bin, tokenizer.model,
tokenizer_config.json, special_tokens_map.json) and loads through the same code
(``load_pretrained`` + ``Tokenizer.from_pretrained``). The weights are random: the text is
nonsense, but every code path (byte pieces, Chinese, batching) is exercised for real.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnllm.model.demo_tokenizer import write_tokenizer_files

log = logging.getLogger(__name__)

MARKER_FILE = "tnllm_demo.json"
# weight files of any official layout (an earlier demo written with other shards must not linger)
_WEIGHT_FILE = re.compile(
    r"^(pytorch_model(-\d{5}-of-\d{5})?\.bin|model(-\d{5}-of-\d{5})?\.safetensors"
    r"|pytorch_model\.bin\.index\.json|model\.safetensors\.index\.json)$"
)


@dataclass(frozen=True)
class DemoSize:
    """Shape of one demo checkpoint (official config keys)."""

    vocab_size: int
    dim: int
    layers: int
    heads: int
    glu_dim: int
    lrpe: tuple[int, ...]
    # N(0, std) weights. Large enough that the layers, not the tied embedding of the input token,
    # dominate the logits: greedy output then varies with the prompt instead of echoing it.
    init_std: float


SIZES: dict[str, DemoSize] = {
    # builds in well under a second; tests use it
    "tiny": DemoSize(vocab_size=1024, dim=64, layers=2, heads=4, glu_dim=96, lrpe=(1, 0), init_std=0.35),
    # ~ 30 M parameters, for CPU benchmarks
    "small": DemoSize(
        vocab_size=4096, dim=512, layers=8, heads=8, glu_dim=1408, lrpe=(1,) + (0,) * 7, init_std=0.2
    ),
}


def demo_config_dict(size: str, vocab_size: int) -> dict[str, Any]:
    """The official-format config.json of a demo checkpoint with ``vocab_size`` = the tokenizer's."""
    spec = SIZES[size]
    return {
        "architectures": ["TransnormerForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_transnormer.TransnormerConfig",
            "AutoModelForCausalLM": "modeling_transnormer.TransnormerForCausalLM",
        },
        "model_type": "transnormer",
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "vocab_size": vocab_size,
        "use_cache": True,
        "init_std": spec.init_std,
        "decoder_embed_dim": spec.dim,
        "decoder_layers": spec.layers,
        "decoder_attention_heads": spec.heads,
        "no_scale_embedding": False,
        "add_bos_token": False,
        "norm_type": "simplermsnorm",
        "linear_use_lrpe_list": list(spec.lrpe),
        "hidden_dim": spec.dim,
        "linear_act_fun": "swish",
        "glu_dim": spec.glu_dim,
        "bias": False,
        "torch_dtype": "float32",
    }


def write_demo_checkpoint(
    out_dir: str | Path, size: str = "tiny", seed: int = 0, *, replace_any: bool = False
) -> Path:
    """Write a demo checkpoint into ``out_dir`` (created; existing files replaced) and return it.

    A folder holding a checkpoint that is not a demo is refused unless ``replace_any`` (used for
    tnllm's own ``<data_dir>/demo-model``, where a crash may have left an unmarked copy).

    The same ``size`` and ``seed`` give byte-identical tokenizer files and identical weights.
    The files are written into a temporary folder next to ``out_dir`` and moved in at the end, so a
    crash never leaves a half-written checkpoint that looks complete.
    """
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    from tnllm.model.checkpoint_io import random_state_dict, save_official_checkpoint
    from tnllm.model.config import TransnormerConfig

    out = Path(out_dir)
    if not replace_any and (out / "config.json").exists() and not is_demo_checkpoint(out):
        # never overwrite a real (downloaded) checkpoint with random weights
        raise ValueError(f"{out} already holds a checkpoint that is not a demo; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        vocab_size = write_tokenizer_files(staging, SIZES[size].vocab_size)
        config_dict = demo_config_dict(size, vocab_size)
        config = TransnormerConfig.from_dict(config_dict)
        save_official_checkpoint(random_state_dict(config, seed=seed), config, staging, fmt="bin")
        marker = {"size": size, "seed": seed, "note": "random weights written by `tnllm demo-model`"}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for stale in out.iterdir():
            if stale.name == MARKER_FILE or _WEIGHT_FILE.match(stale.name):
                stale.unlink()  # weights of an earlier demo checkpoint in another layout
        for item in sorted(staging.iterdir(), key=lambda p: p.name == MARKER_FILE):
            item.replace(out / item.name)  # the marker last: its presence means "complete"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def is_demo_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a complete demo checkpoint (the marker is written last)."""
    return (Path(path) / MARKER_FILE).is_file()
