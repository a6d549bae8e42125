"""The package's layering, checked on the source (ARCHITECTURE.md): imports point down only, no import
cycles, no module over 500 lines. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mmsearch"

# Lowest first. A module may import its own subpackage and any lower layer, never a higher one or a
# sibling of the same layer: __main__ -> cli -> commands -> server/train -> dist/evaluate -> search -> index ->
# encode -> catalog/models -> fsutil/config/errors.
LAYERS = [
    {"_version", "errors", "config", "fsutil", "ranges", "cpus", "progress"},
    {"models", "catalog"},
    {"encode"},
    {"index"},
    {"search"},
    {"dist", "evaluate"},
    {"train", "server"},
    {"commands"},
    {"cli", "__init__"},
    {"__main__"},
]
MAX_LINES = 500


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every mmsearch module ``name`` imports, at module level or inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import mod`` imports a module; ``from mod import name`` the module itself
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if top(name) in group:
            return i
    raise AssertionError(f"{name} belongs to no layer: add its folder to LAYERS in {__file__}")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_imports_point_down_only():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in GRAPH.items() for b in sorted(targets)
             if top(a) != top(b) and layer(b) >= layer(a)]
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES}): split it by concern"


def test_the_checker_sees_function_level_imports():
    # search.engine imports index.build inside a method (upsert/remove): the graph must hold that edge
    assert "mmsearch.index.build" in GRAPH["mmsearch.search.engine"]
