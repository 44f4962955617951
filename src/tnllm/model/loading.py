"""Load an official TransNormerLLM checkpoint folder into :class:`TransnormerLM`.

The model is built on the meta device and every tensor is assigned straight in the target dtype and
device, shard by shard: no fp32 host copy of a bf16 checkpoint. ``.bin`` files are read with
``torch.load(weights_only=True, mmap=True)``; on CPU in the file's dtype the parameters stay backed
by the read-only file mapping (zero copy), so a checkpoint must not be overwritten in place while a
process serves it (our writer replaces files atomically). Every problem is a :class:`CheckpointError`
naming the file and the tensor.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tnllm.errors import CheckpointError
from tnllm.model.checkpoint_io import BIN_INDEX, BIN_SINGLE, EMBED_KEY, HEAD_KEY, ST_INDEX, ST_SINGLE
from tnllm.model.config import TransnormerConfig
from tnllm.model.modeling import TransnormerLM

log = logging.getLogger(__name__)

# Keys the official class itself ignores on load.
_IGNORED = re.compile(r"^decoder\.version$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
) -> TransnormerLM:
    """Load ``config.json`` + weights from ``path`` onto ``device`` in ``dtype`` (eval mode).

    LRPE θ always stays fp32 (positions × θ must be exact; the table is tiny).
    """
    started = time.perf_counter()
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder")
    target = _resolve_dtype(dtype)
    dev = torch.device(device)
    config = TransnormerConfig.from_file(folder / "config.json")
    files, origin = weight_files(folder)
    with torch.device("meta"):
        model = TransnormerLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    loaded: dict[str, Path] = {}
    head: tuple[Tensor, Path] | None = None
    for file in files:
        embed_ptr = None
        for name, tensor in _read_tensors(file):
            if name == HEAD_KEY and config.tie_word_embeddings:
                if embed_ptr is not None and _same_storage(tensor, embed_ptr):
                    continue  # HF-style tied storage, nothing to check
                head = (tensor, file)
                continue
            if not _check_tensor(name, tensor, expected, loaded, file, origin):
                continue
            if name == EMBED_KEY:
                embed_ptr = (
                    tensor.untyped_storage().data_ptr(),
                    int(tensor.storage_offset()),
                    tuple(tensor.shape),
                )
            want = torch.float32 if name.endswith("lrpe.theta") else target
            _assign(model, name, tensor.to(device=dev, dtype=want))
            loaded[name] = file
    missing = sorted(set(expected) - set(loaded))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"{origin}: missing tensors: {shown}")
    if head is not None:
        _check_tied(model, *head)
    model.eval()
    log.info(
        "loaded %s (%d tensors, %s on %s) in %.2fs",
        folder,
        len(loaded),
        target,
        dev,
        time.perf_counter() - started,
    )
    return model


def weight_files(folder: Path) -> tuple[list[Path], Path]:
    """The weight files to read, in order, and the file that named them (index or single file)."""
    for index_name, single_name in ((ST_INDEX, ST_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = folder / index_name
        if index.exists():
            return _shards_from_index(index), index
        single = folder / single_name
        if single.exists():
            return [single], single
    raise CheckpointError(
        f"{folder}: no weights found (expected {ST_SINGLE}, {ST_INDEX}, {BIN_SINGLE} or {BIN_INDEX})"
    )


def _shards_from_index(index: Path) -> list[Path]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        weight_map = doc["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a valid shard index ({err!r})") from None
    shards = []
    for name in names:
        shard = index.parent / str(name)
        if Path(str(name)).name != str(name):
            raise CheckpointError(f"{index}: shard name {name!r} must be a plain file name")
        if not shard.is_file():
            raise CheckpointError(f"{index}: shard {name} is missing from {index.parent}")
        shards.append(shard)
    return shards


def _read_tensors(file: Path) -> Iterator[tuple[str, Tensor]]:
    if file.suffix == ".safetensors":
        yield from _read_safetensors(file)
    else:
        yield from _read_bin(file).items()


def _read_bin(file: Path) -> dict[str, Tensor]:
    # mmap needs the zip container; a legacy (pre-1.6) torch.save file is read without it.
    use_mmap = zipfile.is_zipfile(file)
    try:
        obj: Any = torch.load(file, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{file}: refused, it needs more than plain tensors to load (weights_only): {str(err)[:300]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{file}: cannot read weights (truncated or corrupt file?): {str(err)[:300]}"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{file}: expected a flat dict of tensors (a state dict), got {type(obj).__name__}"
        )
    return obj


def _read_safetensors(file: Path) -> Iterator[tuple[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read weights (truncated or corrupt file?): {err}") from None


def _check_tensor(
    name: str,
    tensor: Tensor,
    expected: dict[str, tuple[int, ...]],
    loaded: dict[str, Path],
    file: Path,
    origin: Path,
) -> bool:
    """Validate one tensor against the config; False for a key to skip silently."""
    if name not in expected:
        if _IGNORED.match(name):
            return False
        raise CheckpointError(
            f"{file}: unexpected tensor {name!r} (not part of this config's model, {origin})"
        )
    if name in loaded:
        raise CheckpointError(
            f"{file}: tensor {name!r} appears again (already read from {loaded[name].name})"
        )
    if tuple(tensor.shape) != expected[name]:
        raise CheckpointError(
            f"{file}: tensor {name!r} has shape {list(tensor.shape)}, the config needs {list(expected[name])}"
        )
    if not tensor.is_floating_point():
        raise CheckpointError(
            f"{file}: tensor {name!r} has dtype {tensor.dtype}, expected a floating-point tensor"
        )
    return True


def _same_storage(tensor: Tensor, ref: tuple[int, int, tuple[int, ...]]) -> bool:
    return (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape)) == ref


def _check_tied(model: TransnormerLM, head: Tensor, file: Path) -> None:
    """Tied config, and a separate lm_head.weight: it must equal the embedding (docs/MODEL_SPEC.md §3.3)."""
    embed = model.model.embed_tokens.weight
    if tuple(head.shape) != tuple(embed.shape):
        raise CheckpointError(
            f"{file}: tensor {HEAD_KEY!r} has shape {list(head.shape)}, expected {list(embed.shape)}"
        )
    if not torch.equal(head.to(device=embed.device, dtype=embed.dtype), embed):
        raise CheckpointError(
            f"{file}: {HEAD_KEY!r} differs from {EMBED_KEY!r} although the config ties them "
            "(tie_word_embeddings absent or true); set tie_word_embeddings false if the head is separate"
        )


def _assign(model: nn.Module, name: str, tensor: Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[name]
