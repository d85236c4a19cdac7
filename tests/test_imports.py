"""The import graph of the package: no cycle between the loaders and the tiny models (issue 11); the library never
imports the CLI or the harnesses beside it (``amsmooth_experiments``, issue 25)."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

import amsmooth

SRC = Path(amsmooth.__file__).parent
EXPERIMENTS = SRC.parent / "amsmooth_experiments"


def _sources() -> list[tuple[str, Path]]:
    """Every module of both packages: library paths relative to amsmooth/, the harnesses' as
    ``amsmooth_experiments/…``."""
    return [*((p.relative_to(SRC).as_posix(), p) for p in SRC.rglob("*.py")),
            *((p.relative_to(SRC.parent).as_posix(), p) for p in EXPERIMENTS.rglob("*.py"))]


def _imports_of(path: Path, package: list[str]) -> set[str]:
    """Every module ``path`` imports anywhere, as dotted names; relative imports resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _amsmooth_imports(rel: str) -> set[str]:
    """Modules of amsmooth that ``rel`` imports anywhere (module level or inside functions), as dotted names."""
    return {m for m in _imports_of(SRC / rel, ["amsmooth", *Path(rel).parent.parts]) if m.startswith("amsmooth")}


def test_tiny_does_not_import_the_loader() -> None:
    assert "amsmooth.models.load" not in _amsmooth_imports("models/tiny.py")
    assert "amsmooth.models.tiny" in _amsmooth_imports("models/load.py")  # the one direction


def test_the_loader_does_not_import_what_it_loads() -> None:
    """One loader for every family; named models it does not build itself (the lab's) come from the registry."""
    assert not any(m.startswith("amsmooth.lab") for m in _amsmooth_imports("models/load.py"))
    assert "amsmooth.models.named" in _amsmooth_imports("models/load.py")
    assert "amsmooth.models.load" not in _amsmooth_imports("models/weights.py")


def test_assembly_and_hub_are_leaves() -> None:
    assert _amsmooth_imports("models/assembly.py") == set()
    assert _amsmooth_imports("models/hub.py") == {"amsmooth.errors"}


# private names one module still takes from a sibling of its own subpackage (package-internal, not API)
_PRIVATE_IMPORTS_ALLOWED = {("lab/report.py", "_rows")}


def test_no_private_names_imported_across_modules() -> None:
    """Modules use each other's public names (issue 11): no ``from .x import _private`` outside the allowlist."""
    found = set()
    for rel, path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("amsmooth")):
                found.update((rel, a.name) for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__"))
    assert found <= _PRIVATE_IMPORTS_ALLOWED, sorted(found - _PRIVATE_IMPORTS_ALLOWED)


# none: the lab table (amsmooth_experiments/lab_table.py) calls the library's typed requests, not the commands
_LIBRARY_USES_OF_THE_CLI: set[tuple[str, str]] = set()
# the command modules: those main.py registers (each defines ``register``)
_COMMANDS = {f"amsmooth.cli.{p.stem}" for p in (SRC / "cli").glob("*.py") if "def register(" in p.read_text()}


def test_the_library_does_not_import_the_cli() -> None:
    """Library modules (outside amsmooth/cli) never reach into the CLI (issue 11: serve took ``is_high`` from
    cli.relevance, the lab took ``minilm_folder`` from cli.common)."""
    found = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "cli":
            continue
        found |= {(rel.as_posix(), m) for m in _amsmooth_imports(rel.as_posix()) if m.startswith("amsmooth.cli")}
    assert found == _LIBRARY_USES_OF_THE_CLI


def _experiment_imports(path: Path, package: list[str]) -> set[str]:
    return {m for m in _imports_of(path, package) if m.split(".")[0] == "amsmooth_experiments"}


def test_the_library_does_not_import_the_experiments() -> None:
    """The harnesses behind ``amsmooth bench`` live in ``amsmooth_experiments`` and call the library; the library
    (amsmooth outside amsmooth/cli) never imports them, at module level or inside a function (issue 25, item 3)."""
    assert "amsmooth_experiments.bench" in _experiment_imports(SRC / "cli" / "bench.py", ["amsmooth", "cli"])
    found = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] != "cli":
            found |= {(rel.as_posix(), m) for m in _experiment_imports(path, ["amsmooth", *rel.parent.parts])}
    assert not found, sorted(found)


# the harnesses call the library's API, not the commands (issue 25, item 3); an entry here needs its reason
_EXPERIMENT_USES_OF_THE_CLI: set[tuple[str, str]] = set()


def test_the_experiments_do_not_import_the_cli() -> None:
    found = set()
    for path in EXPERIMENTS.rglob("*.py"):
        rel = path.relative_to(EXPERIMENTS)
        found |= {(rel.as_posix(), m) for m in _imports_of(path, ["amsmooth_experiments", *rel.parent.parts])
                  if m.startswith("amsmooth.cli")}
    assert found == _EXPERIMENT_USES_OF_THE_CLI, sorted(found)


def test_cli_commands_do_not_import_each_other() -> None:
    """A command module never imports another command: what they share lives in cli/common.py,
    cli/model_options.py and cli/runs.py (issue 11: utility took eval's internals, bench generate's)."""
    assert {"amsmooth.cli.eval", "amsmooth.cli.generate", "amsmooth.cli.utility"} <= _COMMANDS
    found = set()
    for path in (SRC / "cli").glob("*.py"):
        if path.name != "main.py":                       # main registers every command
            found |= {(path.name, m) for m in _amsmooth_imports(f"cli/{path.name}") & _COMMANDS}
    assert not found, sorted(found)


def test_benchmarks_and_scripts_use_the_library_not_the_cli() -> None:
    """Benchmark and helper scripts import library modules; the only CLI entry they may call is ``cli.main``."""
    root = SRC.parents[1]
    found = set()
    for path in [*root.glob("benchmarks/**/*.py"), *root.glob("scripts/*.py")]:
        found |= {(path.relative_to(root).as_posix(), m) for m in _imports_of(path, ["x"])
                  if m.startswith("amsmooth.cli") and m != "amsmooth.cli.main"}
    assert not found, sorted(found)


# Private attributes read on other objects, each with its reason; a new reach-in fails the test below.
_PRIVATE_ATTRIBUTES_ALLOWED = {
    ("pipelines/mixin.py", "pipe._execution_device"),  # diffusers' device rule; execution_device() reads it
    ("baselines/sld.py", "safe._encode_prompt"),    # diffusers' SLD pipeline has no public prompt encoder
    ("pipelines/mixin.py", "new._ams"),              # the same class: from_pipe copies the defense onto its new pipe
    ("pipelines/mixin.py", "new._ams_stage"),
    ("pipelines/mixin.py", "new._ams_spec"),
    ("pipelines/mixin.py", "pipeline._ams"),
}


def test_no_private_attribute_reach_ins() -> None:
    """No ``obj._private`` on anything but ``self`` / ``cls`` outside the allowlist (issue 11: ``cache._data``,
    ``ams._describe``); ``argparse._SubParsersAction`` (a type in register() signatures) is the stdlib's."""
    found = set()
    for rel, path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "argparse"))):
                found.add((rel, ast.unparse(node)))
    assert found <= _PRIVATE_ATTRIBUTES_ALLOWED, sorted(found - _PRIVATE_ATTRIBUTES_ALLOWED)


def _declared_distributions() -> set[str]:
    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_third_party_import_is_declared() -> None:
    """Each third-party module the package imports comes from a distribution pyproject.toml declares (issue 11:
    huggingface_hub and psutil were imported but not declared)."""
    dists = packages_distributions()
    imported = set()
    for _, path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"amsmooth", "amsmooth_experiments"})
    missing = {m: dists.get(m) for m in third_party
               if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & _declared_distributions()}
    assert not missing, missing
