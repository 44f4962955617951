"""Generated sections of hand-written docs: the text between two markers is rewritten or checked.

Shared by ``tools.settings_doc`` (README's settings table) and ``tools.api_doc`` (docs/API.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def splice(document: str, generated: str, start: str, end: str, missing: str) -> str:
    """``document`` with the text between ``start`` and ``end`` replaced by ``generated``.

    Raises ``ValueError`` (``missing`` plus the markers to add) when a marker is absent.
    """
    head, sep, rest = document.partition(start)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"{missing}: add {start!r} and {end!r}")
    return f"{head}{start}\n{generated}\n{end}{tail}"


def write_or_check(
    argv: list[str] | None,
    *,
    description: str,
    option: str,
    default: Path,
    splice_into: Callable[[str], str],
    module: str,
) -> int:
    """The ``main`` of a generator: rewrite the file named by ``option`` (or ``--check`` it is current)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {default.name} is stale")
    parser.add_argument(option, dest="path", type=Path, default=default)
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    try:
        wanted = splice_into(current)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        if current != wanted:
            print(f"{args.path} is stale: run `python -m {module}`", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.path.write_text(wanted, encoding="utf-8")
    return 0
