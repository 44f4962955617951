"""The state store's disk tier: one safetensors file per state, under ``<dir>/<fingerprint>/``.

A file holds the state's layers (``layer.0`` …, ``[H, dk, d]`` in the pool's dtype) and its token
ids (``ids``, int64), with the model fingerprint and dtype in the header. safetensors is plain
tensors (no pickle, nothing executed on load). A file is trusted only when its header names this
model's fingerprint and dtype and its ids hash to its file name, so a folder shared with another
model, or a stray file, is never restored. Writes go to a temporary name and are renamed in.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"


class StateFiles:
    """Files of one model's states (the folder is per fingerprint)."""

    def __init__(self, directory: Path, fingerprint: str, dtype: torch.dtype) -> None:
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.folder = Path(directory) / fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def save(self, key: str, ids: tuple[int, ...], tensors: list[Tensor]) -> None:
        """Write one state (atomically: a temporary file renamed in)."""
        data = {f"layer.{i}": t.detach().to("cpu").contiguous() for i, t in enumerate(tensors)}
        data["ids"] = torch.tensor(ids, dtype=torch.int64)
        meta = {"fingerprint": self.fingerprint, "dtype": str(self.dtype), "layers": str(len(tensors))}
        tmp = self.folder / f".{key}.tmp"
        save_file(data, str(tmp), metadata=meta)
        os.replace(tmp, self.path(key))

    def load(self, key: str, ids: tuple[int, ...]) -> list[Tensor] | None:
        """The layers of ``key`` if its file is this model's and holds exactly ``ids``; else None."""
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if not self._ours(meta) or tuple(f.get_tensor("ids").tolist()) != ids:
                    log.warning("state file %s is not this model's state; ignored", path.name)
                    return None
                return [f.get_tensor(f"layer.{i}") for i in range(int(meta["layers"]))]
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("state file %s unreadable (%s); ignored", path.name, exc)
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def scan(self) -> Iterator[tuple[str, tuple[int, ...], int]]:
        """``(key, ids, state bytes)`` of every file of this model in the folder (bad ones skipped)."""
        for path in sorted(self.folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    if not self._ours(meta):
                        continue
                    ids = tuple(int(t) for t in f.get_tensor("ids").tolist())
                    nbytes = 0
                    for i in range(int(meta["layers"])):
                        shape = f.get_slice(f"layer.{i}").get_shape()
                        nbytes += _numel(shape) * torch.empty((), dtype=self.dtype).element_size()
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                log.warning("state file %s unreadable (%s); skipped", path.name, exc)
                continue
            yield path.name.removesuffix(SUFFIX), ids, nbytes

    def _ours(self, meta: dict[str, str]) -> bool:
        return meta.get("fingerprint") == self.fingerprint and meta.get("dtype") == str(self.dtype)


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
