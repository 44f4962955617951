"""The Lua scripts of the store, read from ``lua/*.lua`` (package data) once at import.

Every job state transition is one atomic script that checks the current state; the webhook
schedule's steps (``webhook_*.lua``) are scripts too. Keys are always passed in KEYS (never built
inside Lua) so the scripts stay cluster-friendly; times are epoch seconds as decimal strings, chosen
by the caller. A file starting with ``_`` is a shared function: a script names it on a line
``-- include: _name`` and gets its text in place of that line (EVAL takes one self-contained body).
"""

from __future__ import annotations

import re
from importlib.resources import files

_INCLUDE = re.compile(r"^-- include: (_\w+)$", re.MULTILINE)
_DIR = files("tnllm.store") / "lua"


def _read(name: str) -> str:
    return (_DIR / f"{name}.lua").read_text(encoding="utf-8")


def load(name: str) -> str:
    """The full body of script ``name`` (its includes expanded)."""
    return _INCLUDE.sub(lambda m: _read(m.group(1)).rstrip("\n"), _read(name))


def _names() -> list[str]:
    return sorted(f.name[: -len(".lua")] for f in _DIR.iterdir() if f.name.endswith(".lua"))


#: The job store's scripts by name (``ops.ScriptCall.name``).
ALL: dict[str, str] = {n: load(n) for n in _names() if not n.startswith(("_", "webhook_"))}
#: The webhook schedule's scripts (``tnllm.store.webhooks``).
WEBHOOK: dict[str, str] = {n: load(n) for n in _names() if n.startswith("webhook_")}
