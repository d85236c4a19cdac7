"""The import graph of the package: no cycle between the loaders and the tiny models (issue 11)."""
from __future__ import annotations

import ast
from pathlib import Path

import amsmooth

SRC = Path(amsmooth.__file__).parent


def _amsmooth_imports(rel: str) -> set[str]:
    """Modules of amsmooth that ``rel`` imports anywhere (module level or inside functions), as dotted names."""
    path = SRC / rel
    package = ["amsmooth", *Path(rel).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("amsmooth"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("amsmooth"))
    return found


def test_tiny_does_not_import_loading() -> None:
    assert "amsmooth.loading" not in _amsmooth_imports("tiny.py")
    assert "amsmooth.tiny" in _amsmooth_imports("loading.py")  # the one direction left


def test_assembly_is_a_leaf() -> None:
    assert _amsmooth_imports("assembly.py") == set()
