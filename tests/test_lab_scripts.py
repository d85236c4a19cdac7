"""scripts/lab_paired.py and scripts/lab_reseed.py on a tiny hand-made lab table folder."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from amsmooth.eval.store import ImageResult, ResultStore

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, flags: dict[str, list[int]]) -> None:
    """An eval store whose rows carry what the scripts read: set, case number ({prompt}-{seed}), flagged."""
    folder.mkdir(parents=True)
    with ResultStore.open(folder, {"model": "lab", "defense": folder.name}) as store:
        for name, values in flags.items():
            for i, v in enumerate(values):
                store.add(ImageResult(name, f"{i // 2}-{i % 2}", 0, "p", folder.name, flagged=bool(v)))


def _script(*argv: str) -> str:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    return done.stdout


def _paired(capsys, *argv: str) -> str:
    """scripts/lab_paired.py's output, run in this process (its imports cost ~10 s in a fresh one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lab_paired", ROOT / "scripts" / "lab_paired.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    module.main(list(argv))
    return capsys.readouterr().out


def test_paired_differences_per_prompt_and_pooled(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"sets": ["train", "benign"], "attacks": ["uda"],
                                                          "defenses": ["none", "blacklist", "ams"]}))
    # 2 prompts × 2 seeds per set; AMS removes both flagged images of prompt 0 of uda
    _run(tmp_path / "runs" / "esd-none", {"train": [0, 0, 0, 0], "uda": [1, 1, 0, 1], "benign": [0, 0, 0, 0]})
    _run(tmp_path / "runs" / "esd-ams", {"train": [0, 0, 0, 0], "uda": [0, 0, 0, 1], "benign": [0, 0, 0, 0]})
    out = _paired(capsys, str(tmp_path), "--models", "esd")
    uda = next(line for line in out.splitlines() if " uda " in line)
    assert "prompts   2" in uda and "ams − none: -50" in uda
    assert "blacklist" not in out                     # runs that are not there are skipped
    # a replicate with the same prompts at other image seeds is pooled per prompt
    _run(tmp_path / "rep" / "esd-none", {"uda": [0, 0, 0, 0]})
    _run(tmp_path / "rep" / "esd-ams", {"uda": [0, 0, 0, 0]})
    out = _paired(capsys, str(tmp_path), "--models", "esd", "--replicate", str(tmp_path / "rep"))
    assert "ams − none: -25" in next(line for line in out.splitlines() if " uda " in line)


def test_cross_compares_runs_of_two_tables(tmp_path, capsys):
    """`--cross A B`: A − B per set over the prompts both runs have (here another table's run)."""
    (tmp_path / "plan.json").write_text(json.dumps({"sets": ["train"], "attacks": ["uda"], "defenses": ["none"]}))
    _run(tmp_path / "runs" / "esd-none", {"uda": [1, 1, 0, 1]})
    _run(tmp_path / "runs" / "esd-ams", {"uda": [0, 0, 0, 1]})
    _run(tmp_path / "rivals" / "runs" / "race-none", {"uda": [1, 1, 1, 1, 1, 1]})    # a third prompt: unpaired
    out = _paired(capsys, str(tmp_path), "--models", "esd", "--cross", str(tmp_path / "runs" / "esd-ams"),
                  str(tmp_path / "rivals" / "runs" / "race-none"))
    line = next(x for x in out.splitlines() if x.startswith("esd-ams − race-none uda "))
    assert "prompts   2  a − b: -75" in line, line


def test_reseed_shifts_only_the_image_seeds(tmp_path):
    src = tmp_path / "uda.csv"
    src.write_text("prompt,case_number,evaluation_seed,evaluation_guidance\nx y,0-0-0,0,7.5\nz,0-0-1,1,7.5\n")
    (tmp_path / "plan.json").write_text(json.dumps({"sets": [], "attacks": ["uda"]}))
    (tmp_path / "runs" / "esd-none").mkdir(parents=True)
    (tmp_path / "runs" / "esd-none" / "config.json").write_text(json.dumps({"prompt_files": {"uda": str(src)}}))
    _script(str(ROOT / "scripts" / "lab_reseed.py"), str(tmp_path), "--offset", "3", "--out", str(tmp_path / "o"))
    with (tmp_path / "o" / "uda.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["prompt"], r["case_number"], r["evaluation_seed"]) for r in rows] == [("x y", "0-0-0", "3"),
                                                                                     ("z", "0-0-1", "4")]


def test_power_simulation_uses_the_reports_comparison():
    """scripts/lab_plan.simulate runs amsmooth.lab.report.paired on simulated tables: more prompts, narrower
    intervals; a true 3.7× reduction is told from 1.6× on 125 prompts."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import lab_plan
    finally:
        sys.path.pop(0)
    small, large = lab_plan.simulate(25, 2, 3.7, reps=30), lab_plan.simulate(125, 2, 3.7, reps=30)
    assert small["half_width"] > large["half_width"] and large["excludes_1.6x"] >= 0.9
    assert lab_plan.simulate(25, 2, 3.7, reps=30) == small                                  # seeded
