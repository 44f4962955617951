"""Write TransNormerLLM checkpoints in the official file format (random weights for demos, tests, benchmarks).

Layout as Hugging Face ``save_pretrained`` writes it: ``config.json``, ``generation_config.json`` and
``pytorch_model.bin`` / ``model.safetensors``, or shards plus an index json when ``max_shard_bytes``
is given. The tied head is stored like HF does: in ``.bin`` files ``lm_head.weight`` shares storage
with the embedding (stored once); safetensors cannot share, so there only the embedding is written.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tnllm.model.config import TransnormerConfig
from tnllm.model.formulas import lrpe_theta_init

EMBED_KEY = "model.embed_tokens.weight"
HEAD_KEY = "lm_head.weight"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
ST_SINGLE, ST_INDEX = "model.safetensors", "model.safetensors.index.json"
WRITER_TRANSFORMERS_VERSION = "4.37.0"


def expected_shapes(config: TransnormerConfig) -> dict[str, tuple[int, ...]]:
    """Official tensor names and shapes of a checkpoint for ``config`` (``lm_head.weight`` only if untied)."""
    from tnllm.model.modeling import TransnormerLM

    with torch.device("meta"):
        model = TransnormerLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def iter_random_tensors(
    config: TransnormerConfig, seed: int, std: float | None = None, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` of a random checkpoint one tensor at a time (bounded memory).

    Weights ~ N(0, std) (default ``config.init_std``), the padding row zeroed, θ by its init formula.
    Biases and LayerNorm affine parameters are random too (not zero/one as at official init) so that
    a test notices when one of them is dropped. When tied, ``lm_head.weight`` follows the embedding
    as the very same tensor.
    """
    std = config.init_std if std is None else std
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(config)
    for name, shape in shapes.items():
        if name.endswith("lrpe.theta"):
            tensor = lrpe_theta_init(shape[0], shape[2])
        elif "norm." in name and name.endswith(".weight"):
            tensor = 1 + std * torch.randn(shape, generator=gen)
        else:
            tensor = std * torch.randn(shape, generator=gen)
        if name == EMBED_KEY and config.pad_token_id is not None and 0 <= config.pad_token_id < shape[0]:
            tensor[config.pad_token_id] = 0
        tensor = tensor.to(dtype)
        yield name, tensor
        if name == EMBED_KEY and config.tie_word_embeddings:
            yield HEAD_KEY, tensor


def random_state_dict(config: TransnormerConfig, seed: int, std: float | None = None) -> dict[str, Tensor]:
    """A whole random fp32 state dict with official key names (see :func:`iter_random_tensors`)."""
    return dict(iter_random_tensors(config, seed, std))


def generation_config(config: TransnormerConfig) -> dict[str, Any]:
    return {
        "_from_model_config": True,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id
        if not isinstance(config.eos_token_id, tuple)
        else list(config.eos_token_id),
        "pad_token_id": config.pad_token_id,
        "transformers_version": WRITER_TRANSFORMERS_VERSION,
    }


def save_official_checkpoint(
    state_dict: dict[str, Tensor] | Iterable[tuple[str, Tensor]],
    config: TransnormerConfig | dict[str, Any],
    out_dir: str | Path,
    fmt: str = "bin",
    max_shard_bytes: int | None = None,
) -> Path:
    """Write config.json, generation_config.json and the weights (single file or shards + index).

    ``state_dict`` may be a dict or an iterable of ``(name, tensor)`` pairs, consumed one shard at a
    time so that a checkpoint larger than RAM can be written from :func:`iter_random_tensors`.
    """
    if fmt not in ("bin", "safetensors"):
        raise ValueError(f"fmt must be 'bin' or 'safetensors', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_official_dict() if isinstance(config, TransnormerConfig) else dict(config)
    cfg = config if isinstance(config, TransnormerConfig) else None
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    if cfg is not None:
        (out / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
    items = state_dict.items() if isinstance(state_dict, dict) else state_dict
    _write_weights(items, out, fmt, max_shard_bytes)
    return out


def _write_weights(
    items: Iterable[tuple[str, Tensor]], out: Path, fmt: str, max_shard_bytes: int | None
) -> None:
    limit = max_shard_bytes if max_shard_bytes is not None else float("inf")
    tmp_names: list[str] = []
    weight_map: dict[str, int] = {}  # name -> shard number (0-based)
    # Aliases (the tied head) are recognised by storage address + view. Tensors of earlier shards are
    # held only weakly: once freed, their address may be reused by a new, different tensor.
    written: dict[tuple[int, int, tuple[int, ...]], weakref.ref[Tensor]] = {}
    shard: dict[str, Tensor] = {}
    shard_keys: set[tuple[int, int, tuple[int, ...]]] = set()
    shard_bytes = total = 0

    def flush() -> None:
        nonlocal shard, shard_keys, shard_bytes
        tmp = out / f".shard-{len(tmp_names):05d}.tmp"
        _save_file(shard, tmp, fmt)
        tmp_names.append(tmp.name)
        written.update({_alias_key(t): weakref.ref(t) for t in shard.values()})
        shard, shard_keys, shard_bytes = {}, set(), 0

    for name, tensor in items:
        key = _alias_key(tensor)
        earlier = written.get(key)
        if key in shard_keys or (fmt == "safetensors" and earlier is not None and earlier() is not None):
            if fmt == "bin":  # stored once inside the file, like HF's tied weights
                shard[name] = tensor
                weight_map[name] = len(tmp_names)
            continue  # safetensors: a shared tensor is written once, under its first name
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > limit:
            flush()
        shard[name] = tensor
        shard_keys.add(key)
        shard_bytes += size
        total += size
        weight_map[name] = len(tmp_names)
    if shard or not tmp_names:
        flush()
    _finalise(out, fmt, tmp_names, weight_map, total)


def _alias_key(tensor: Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))


def _save_file(tensors: dict[str, Tensor], path: Path, fmt: str) -> None:
    if fmt == "bin":
        torch.save(tensors, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _finalise(out: Path, fmt: str, tmp_names: list[str], weight_map: dict[str, int], total: int) -> None:
    single, index = (BIN_SINGLE, BIN_INDEX) if fmt == "bin" else (ST_SINGLE, ST_INDEX)
    if len(tmp_names) == 1:
        os.replace(out / tmp_names[0], out / single)
        return
    n = len(tmp_names)
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    finals = [f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]
    for tmp, final in zip(tmp_names, finals, strict=True):
        os.replace(out / tmp, out / final)
    doc = {"metadata": {"total_size": total}, "weight_map": {k: finals[v] for k, v in weight_map.items()}}
    (out / index).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
