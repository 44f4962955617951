"""The package's rooms import one way, and its import graph has no cycle.

Every ``import`` in ``src/tnllm`` counts, at any depth: a lazy import inside a function is still a
dependency, and so is one under ``if TYPE_CHECKING:`` (a cycle that only type hints close is still
two rooms that know each other). A room is ``tnllm.<name>``; the allowed
direction is config/errors/logging ← protocol ← text ← store ← {api, webhooks, worker};
model ← engine ← worker; client (the Python client: protocol and errors only); cli on top
(docs/INTERNALS.md, "Rooms").
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tnllm"

BASE = {"config", "errors", "logging"}
#: room -> the tnllm rooms it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "errors": set(),
    "config": {"errors"},
    "logging": {"config", "errors"},
    "protocol": BASE,
    "text": BASE | {"protocol"},
    "store": BASE | {"protocol", "text"},
    "model": BASE | {"text"},
    "engine": BASE | {"protocol", "text", "model"},
    "webhooks": BASE | {"protocol", "text", "store"},
    "worker": BASE | {"protocol", "text", "store", "engine"},
    "api": BASE | {"protocol", "text", "store", "webhooks"},
    # the Python client runs in a user's program: the contracts and the error tree, nothing else
    "client": {"errors", "protocol"},
    # cli also reads the package root (``tnllm.__version__`` for ``tnllm --version``)
    "cli": BASE
    | {"__init__", "protocol", "text", "store", "model", "engine", "webhooks", "worker", "api", "client"},
}
ACCELERATOR = {"torch", "triton", "fla", "transformers", "safetensors", "modelscope", "numpy"}
SERVING = {"redis", "celery", "kombu", "httpx", "fastapi", "starlette", "uvicorn", "sse_starlette", "flower"}
#: room -> third-party top-level packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "errors": ACCELERATOR | SERVING,
    "config": ACCELERATOR | SERVING,
    "logging": ACCELERATOR,
    "protocol": ACCELERATOR,
    "text": ACCELERATOR | SERVING,
    "store": ACCELERATOR,
    "webhooks": ACCELERATOR,
    "worker": ACCELERATOR,
    "api": ACCELERATOR,
    "client": ACCELERATOR | (SERVING - {"httpx"}),
    "model": SERVING,
    "engine": SERVING,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def imports_of(module: str) -> set[str]:
    """Absolute names ``module`` imports: tnllm modules resolved to a module of the package."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in MODULES else base)
    return found


def _internal(name: str) -> str | None:
    """The package module an import of ``name`` loads last (``tnllm.a.b`` → itself or a parent)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


GRAPH = {
    m: {t for t in (_internal(n) for n in imports_of(m) if n.split(".")[0] == "tnllm") if t and t != m}
    for m in MODULES
}


def test_every_room_is_known() -> None:
    assert {room(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module: str) -> None:
    mine = room(module)
    wrong = sorted(t for t in GRAPH[module] if room(t) != mine and room(t) not in ALLOWED[mine])
    assert not wrong, f"{module} ({mine}) may not import {wrong}"
    external = {n.split(".")[0] for n in imports_of(module) if n.split(".")[0] != "tnllm"}
    banned = sorted(external & FORBIDDEN.get(mine, set()))
    assert not banned, f"{module} ({mine}) may not import {banned}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "modules",
    [
        ["tnllm.api.main"],
        ["tnllm.worker.tasks", "tnllm.worker.process", "tnllm.webhooks.process"],
        ["tnllm.client"],
    ],
)
def test_torch_free_processes(modules: list[str]) -> None:
    """The API, the GPU worker process (its engine runs in a child), the webhook worker and the
    Python client never load torch, checked in a fresh interpreter."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
