"""ruff, configured in pyproject.toml ([tool.ruff]), is clean on the package, the tests and the scripts."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Files being rewritten on another branch when the linter was introduced (issue 11): they are linted once that
# branch is merged and their findings are fixed; empty this list then. Nothing else may be added here.
PENDING_MERGE: list[str] = []   # files excluded until a concurrent branch lands (none now)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (pip install 'amsmooth[test]' or pip install ruff)")
def test_ruff_check_is_clean() -> None:
    cmd = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise"]
    if PENDING_MERGE:
        cmd += ["--extend-exclude", ",".join(PENDING_MERGE)]
    run = subprocess.run([*cmd, "src", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
