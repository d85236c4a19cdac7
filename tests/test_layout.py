"""The package's layout (issue 25): no import circle, no file name used twice.

Both packages under src/ are read: the library (``amsmooth``) and the harnesses beside it
(``amsmooth_experiments``, which the library never imports: tests/test_imports.py).

The import graph is read with ``ast`` from the source (nothing is imported): an edge A → B for every
``import``/``from … import`` of an amsmooth module B in A. Two graphs are checked: module-level imports only, and
every import, including those inside functions — a circle closed only by an import inside a function is a circle
dodged, not removed. Imports under ``if TYPE_CHECKING:`` are not run and are left out. Lazy imports of third-party
packages (torch, diffusers, transformers: CLI start-up, docs/hardening.md) are not edges of this graph.
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "amsmooth"
EXPERIMENTS = SRC.parent / "amsmooth_experiments"
FILES = [*SRC.rglob("*.py"), *EXPERIMENTS.rglob("*.py")]

# Waiting on other items of issue 25, each named; a new entry needs the same justification.
PENDING_CYCLES: set[frozenset[str]] = set()
PENDING_NAMES: set[str] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in FILES}


def _targets(module: str, node: ast.Import | ast.ImportFrom, package: bool) -> set[str]:
    """The amsmooth modules one import statement loads (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:
        base = module.split(".")[: len(module.split(".")) + (1 if package else 0) - node.level]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
    return {m for m in found if m in MODULES}


def _imports(tree: ast.AST, top_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements, skipping ``if TYPE_CHECKING:`` blocks; ``top_level``: not inside a def or class."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(top_level: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges = set()
        for node in _imports(tree, top_level):
            edges |= _targets(module, node, path.name == "__init__.py")
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_circle_and_the_graph_is_read() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    graph = import_graph(top_level=True)
    assert "amsmooth.smoothing" in graph["amsmooth.pipelines.mixin"]      # relative imports resolved
    assert "amsmooth.models.hub" in graph["amsmooth.models.weights"]
    assert "amsmooth.smoothing" in graph["amsmooth_experiments.family_bench"]    # the harnesses are read too


def test_no_import_circle_at_module_level() -> None:
    assert [sorted(c) for c in cycles(import_graph(top_level=True))] == []


def test_no_import_circle_dodged_inside_a_function() -> None:
    found = set(cycles(import_graph(top_level=False)))
    assert not found - PENDING_CYCLES, sorted(sorted(c) for c in found - PENDING_CYCLES)


def test_no_file_name_used_twice() -> None:
    """Module file names are unique across both packages (``__init__.py`` aside; ``cli/`` modules are named after
    their commands, which cli/main.py imports by name)."""
    names = Counter(p.name for p in FILES
                    if p.name != "__init__.py" and p.relative_to(SRC.parent).parts[:2] != ("amsmooth", "cli"))
    twice = {n: c for n, c in names.items() if c > 1 and n not in PENDING_NAMES}
    assert not twice, twice
