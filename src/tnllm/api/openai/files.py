"""The Batch API's files: bytes under ``<data_dir>/files/`` (several API processes need that folder
shared), file objects in Redis (``tnllm.store.batches``). Blocking disk I/O runs in a thread."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import anyio

_ID = re.compile(r"^[a-z_]+-[0-9a-f]{24}$")


def new_id(prefix: str) -> str:
    """A fresh object id such as ``file-<24 hex>``."""
    return f"{prefix}-{secrets.token_hex(12)}"


def file_object(file_id: str, size: int, filename: str, purpose: str) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


class FileStorage:
    """File contents on disk, one file per id, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, file_id: str) -> Path:
        if not _ID.match(file_id):
            raise KeyError(file_id)
        return self.root / file_id

    def _write(self, file_id: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(file_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see half a file

    async def write(self, file_id: str, data: bytes) -> None:
        """Store the bytes of ``file_id``."""
        await anyio.to_thread.run_sync(self._write, file_id, data)

    async def read(self, file_id: str) -> bytes:
        """The bytes of ``file_id`` (``FileNotFoundError`` when gone)."""
        return await anyio.to_thread.run_sync(self._path(file_id).read_bytes)

    async def delete(self, file_id: str) -> None:
        """Remove ``file_id``'s bytes (absent is fine)."""
        await anyio.to_thread.run_sync(lambda: self._path(file_id).unlink(missing_ok=True))
