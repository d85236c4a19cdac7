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


def test_family_loader_does_not_import_the_sd_loader() -> None:
    """The weight helpers both loaders need live in amsmooth.weights; only loading → families.loading is left."""
    assert "amsmooth.loading" not in _amsmooth_imports("families/loading.py")
    assert "amsmooth.weights" in _amsmooth_imports("families/loading.py")
    assert "amsmooth.loading" not in _amsmooth_imports("weights.py")


def test_assembly_and_hub_are_leaves() -> None:
    assert _amsmooth_imports("assembly.py") == set()
    assert _amsmooth_imports("hub.py") == {"amsmooth.errors"}


# private names one module still takes from a sibling of its own subpackage (package-internal, not API)
_PRIVATE_IMPORTS_ALLOWED = {("families/sd.py", "_CallState"), ("lab/report.py", "_rows")}


def test_no_private_names_imported_across_modules() -> None:
    """Modules use each other's public names (issue 11): no ``from .x import _private`` outside the allowlist."""
    found = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("amsmooth")):
                found.update((rel, a.name) for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__"))
    assert found <= _PRIVATE_IMPORTS_ALLOWED, sorted(found - _PRIVATE_IMPORTS_ALLOWED)
