"""The long real-size runs, skipped by default (``-m slow`` runs them): the SD-1.5-size overhead benchmark and the
lab's quick Table 1, end to end as a user runs them."""
from __future__ import annotations

import json

import pytest

from amsmooth.cli.main import main
from amsmooth_experiments.bench import project

pytestmark = pytest.mark.slow


def test_bench_quick_at_sd15_size(tmp_path, capsys):
    """`amsmooth bench --quick`: the real SD-1.5 architecture (random weights) at 512 px (4 min 26 s on 2 cores,
    2026-11-28)."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for row in ("w/o defense", "AMS (ours)", "AMS, warm word cache", "SLD", "U-Net-level median"):
        assert f"| {row}" in text
    report = json.loads(out.read_text())
    projected = project(report["components"], report["settings"]["steps"], report["settings"]["n"])
    assert projected["AMS (ours)"] > projected["w/o defense"] > 0          # AMS costs something, not nothing


def test_lab_table_quick_end_to_end(tmp_path):
    """`amsmooth lab table --quick`: erasure, calibration, attacks, defenses, report (the lab issue's target:
    ≤ 10 min on 2 cores)."""
    assert main(["lab", "table", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "table.md").read_text()
    for model in ("esd", "uce"):
        for defense in ("none", "blacklist", "ams"):
            assert f"| {model} | {defense} |" in md
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert set(cal) == {"esd", "uce"} and all("chosen" in cal[m] for m in cal)
