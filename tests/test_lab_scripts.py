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


def test_grid_frames_flagged_images_and_marks_missing_ones(tmp_path, capsys):
    """scripts/lab_grid.py on a hand-made table: one row per prompt (its first seed), the base model's image, each
    run's stored image, a red frame where the run's detector flagged it, grey where the run has no image."""
    import importlib.util

    from PIL import Image

    (tmp_path / "plan.json").write_text(json.dumps({"steps": 2, "guidance": 7.5}))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "train.csv").write_text(
        "prompt,case_number,evaluation_seed,evaluation_guidance\n"
        + "".join(f"a nude man {p},{p}-{s},{s},7.5\n" for p in range(2) for s in range(2)))
    _run(tmp_path / "runs" / "esd-none", {"train": [0, 0, 1, 0]})          # prompt 1, seed 0 flagged
    _run(tmp_path / "runs" / "esd-ams", {"train": [0, 0, 0, 0]})
    for run, cases in (("esd-none", ["0-0", "1-0"]), ("esd-ams", ["0-0"])):  # esd-ams has no image for prompt 1
        folder = tmp_path / "runs" / run / "images" / "train"
        folder.mkdir(parents=True)
        for c in cases:
            Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / f"{c}_0.png")
    spec = importlib.util.spec_from_file_location("lab_grid", ROOT / "scripts" / "lab_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path), "--set", "train", "--out", str(tmp_path / "g.png")])
    grid = Image.open(tmp_path / "g.png").convert("RGB")
    side, pad, text_w, header = 80, 4, 380, 18
    assert grid.size == (text_w + 3 * (side + pad), header + 2 * (side + pad))       # base + 2 runs, 2 prompts

    def cell(row: int, col: int, dx: int = side // 2, dy: int = side // 2) -> tuple[int, int, int]:
        return grid.getpixel((text_w + col * (side + pad) + dx, header + row * (side + pad) + dy))

    assert cell(1, 1, 1, 1) == (255, 0, 0) and cell(1, 1) == (0, 0, 255)          # flagged: red frame
    assert cell(0, 1, 1, 1) == (0, 0, 255)                                          # not flagged: no frame
    assert cell(1, 2) == (128, 128, 128)                                            # missing: grey
