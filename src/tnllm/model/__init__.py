"""Native TransNormerLLM: configuration, modules, attention ops, loading, tokenizer.

``load_pretrained`` is the public entry point (used by ../shared/reference/check_parity.py).
Submodules import torch; this package's import does not, until a name is asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pretrained"]


def __getattr__(name: str) -> Any:
    if name == "load_pretrained":
        from tnllm.model.loading import load_pretrained

        return load_pretrained
    raise AttributeError(name)
