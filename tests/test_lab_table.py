"""A smoke run of the lab's Table 1: every step (erasure, calibration, an attack, eval runs, the report) on a
plan of two prompts and one seed (FID needs two images)."""
from __future__ import annotations

import csv
import json

import pytest

from amsmooth.errors import AmsmoothError
from amsmooth.lab.model import lab_dir
from amsmooth.lab.report import cluster, rate_with_interval

shipped = pytest.mark.skipif(not (lab_dir() / "unet" / "diffusion_pytorch_model.safetensors").is_file(),
                             reason="the lab weights are not shipped in this checkout")


def test_bootstrap_interval_covers_the_rate_and_widens_with_disagreement() -> None:
    same = rate_with_interval([True, True, False, False] * 5, [str(i // 2) for i in range(20)])
    assert same[1] <= same[0] <= same[2]
    constant = rate_with_interval([True] * 10, [str(i) for i in range(10)])
    assert constant == (100.0, 100.0, 100.0)
    assert cluster("12-2") == "12" and cluster("3-1-0") == "3-1"


@pytest.mark.slow   # 141 s: the whole table on a tiny plan; the calibration search and report have unit tests
@shipped
def test_lab_table_smoke(tmp_path) -> None:
    from amsmooth_experiments.lab_table import Plan, Table

    arms = ("none", "ams", "ams-equal", "ams-oracle", "ams-subspace", "safree")
    plan = Plan(prompts=2, attack_prompts=1, calibration_prompts=2, calibration_benign_prompts=2,
                calibration_seeds=(0,), seeds=(0,), image_seeds=(0, 1), steps=3, sets=("train", "benign"),
                attacks=("rab",), defenses=arms, models=("uce",), calibration_attacks=("rab",), sigma0_grid=(0.1,),
                k_grid=(3.0,), equal_sigma0_grid=(0.1, 0.2), oracle_sigma0_grid=(0.1,), oracle_k_grid=(3.0,),
                subspace_sigma0_grid=(0.1,), subspace_k_grid=(9.0,), safree_svf_grid=("on",),
                attack_budget="lab", label="smoke")
    md = Table(tmp_path, plan, batch_size=2).run()
    assert "batch size 2" in md
    assert all(f"| uce | {d} |" in md for d in arms) and "rab" in md
    summary = json.loads((tmp_path / "table.json").read_text())
    assert {r["defense"] for r in summary["rows"]} == set(arms)
    assert {(r["a"], r["b"], r["sets"]) for r in summary["paired"]} >= {("ams", "none", "all attacks"),
                                                                         ("ams", "ams-equal", "rab")}
    assert "| uce | ams − none | all attacks | 1 |" in md
    assert (tmp_path / "table.png").is_file()
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert cal["uce"]["chosen"]["ams"] == {"sigma0": 0.1, "k": 3.0}
    equal = cal["uce"]["trials"]["ams-equal"]
    assert cal["uce"]["chosen"]["ams-equal"]["k"] == 0.0 and 1 <= len(equal) <= 2
    assert all(t["concept_rate"] is None and 0 <= t["accuracy"] <= 1 for t in equal)   # its rule needs accuracy only
    oracle = json.loads((tmp_path / "runs" / "uce-ams-oracle" / "config.json").read_text())["defense_config"]
    assert oracle["relevance"] == "model-aware" and oracle["sigma0"] == 0.1
    assert cal["uce"]["chosen"]["safree"] == {"svf": "on"}
    sub = json.loads((tmp_path / "runs" / "uce-ams-subspace" / "config.json").read_text())["defense_config"]
    assert sub["relevance"] == "subspace"
    # relevance quality is printed per text-only AMS arm and lexicon, attack sets included
    assert "Relevance quality" in md and "| uce | ams | training |" in md and "| uce | ams-subspace |" in md
    assert any(r["lexicon"] == "attack: rab" for r in summary["relevance"]["uce"])
    # each attack prompt is evaluated under every image seed, clustered by its source prompt
    with (tmp_path / "prompts" / "shared" / "rab.csv").open() as f:
        cases = [r["case_number"] for r in csv.DictReader(f)]
    assert cases == ["0-0-a0i0", "0-0-a0i1"]
    # AMS is calibrated on attacked calibration prompts too, kept apart from the table's attack sets
    assert (tmp_path / "prompts" / "calibration" / "shared" / "calibration-rab.csv").is_file()
    assert (tmp_path / "runs" / "calibration" / "uce-none" / "concept" / "images" / "calibration-rab").is_dir()
    assert (tmp_path / "runs" / "calibration" / "uce-none" / "benign" / "images" / "calibration-benign").is_dir()
    # the attacks' sources are distinct prompts, not one prompt under each seed
    with (tmp_path / "prompts" / "attack-source.csv").open() as f:
        sources = [r["prompt"] for r in csv.DictReader(f)]
    assert len(sources) == len(set(sources)) == plan.attack_prompts
    # every step's wall seconds are recorded
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing) == {"base-none", "uce/erase", "uce/calibrate", "uce/attack-rab", "uce/relevance", "report",
                           *(f"uce/eval-{d}" for d in arms)}
    assert timing["uce/calibrate"] > 0 and min(timing.values()) >= 0
    # resumable: a second run does no new work and gives the same table; its seconds add to the record
    again = Table(tmp_path, plan, batch_size=2)
    assert again.run() == md
    assert again.seconds() >= sum(timing.values())
    with pytest.raises(AmsmoothError, match="adaptive"):
        Table(tmp_path / "bad", Plan(calibration_attacks=("rab-adaptive",)))
    with pytest.raises(AmsmoothError, match="--batch-size"):
        Table(tmp_path / "bad2", Plan(), batch_size=0)


def test_attack_sources_are_distinct_prompts(tmp_path) -> None:
    """4 attack source prompts are 4 prompts, not the first rows of train.csv (one prompt under each seed)."""
    import csv

    from amsmooth_experiments.lab_table import Plan, Table

    paths = Table(tmp_path, Plan(prompts=4, attack_prompts=4, seeds=(0, 1, 2))).prompts()

    def prompts(name: str) -> list[str]:
        with paths[name].open() as f:
            return [r["prompt"] for r in csv.DictReader(f)]
    train, sources = prompts("train"), prompts("attack-source")
    assert len(train) == 12 and len(sources) == len(set(sources)) == 4 and set(sources) == set(train)


def test_calibration_search_walks_sigma_up_and_stops_below_the_floor(tmp_path, monkeypatch) -> None:
    """Within each k, σ0 ascends; a trial below the utility floor gets no concept images and ends its k's walk;
    the choice is the lowest concept rate that clears the floor; ams-equal walks to ams's accuracy, accuracy only."""
    from amsmooth_experiments import lab_table as T

    def accuracy(s: dict) -> float:
        return 0.9 if not s else 0.9 - s["sigma0"] * (0.02 + s["k"] / 100)

    calls = []

    def trial(self, name, unet, arm, setting, sets, prompts, floor, concept=True):
        calls.append((arm, setting.get("sigma0"), setting.get("k"), concept))
        acc = accuracy(setting)
        if setting.get("sigma0") == 8.0:
            return {**setting, "refused": "σ too large"}
        rate = None if not concept or (floor is not None and acc < floor) else 0.5 - 0.1 * setting.get("sigma0", 0)
        return {**setting, "accuracy": acc, "concept_rate": rate}

    monkeypatch.setattr(T.Table, "_trial", trial)
    monkeypatch.setattr(T.Table, "attack", lambda self, *a, **k: tmp_path / "x.csv")
    plan = T.Plan(defenses=("none", "ams", "ams-equal"), sigma0_grid=(0.5, 1.0, 2.0, 8.0), k_grid=(3.0, 9.0),
                  equal_sigma0_grid=(0.5, 1.0, 2.0, 3.0), calibration_attacks=("uda",))
    table = T.Table(tmp_path, plan)
    prompts = {f"calibration-{k}": tmp_path / f"{k}.csv" for k in ("train", "heldout", "implicit", "benign")}
    chosen = table.calibrate("esd", tmp_path / "u.safetensors", prompts)
    # floor 0.85: k = 3 clears σ0 0.5, 1 (0.85), not 2 (0.80) → stops; k = 9 clears none at 0.5 (0.845) → stops
    assert [(a, s, k) for a, s, k, _ in calls if a == "ams"] == [("ams", 0.5, 3.0), ("ams", 1.0, 3.0),
                                                              ("ams", 2.0, 3.0), ("ams", 0.5, 9.0)]
    assert chosen["ams"] == {"sigma0": 1.0, "k": 3.0}
    # ams-equal: accuracy only, up to ams's 0.85 (k = 0: 0.9 − 0.02 σ0 → σ0 0.5…2 clear, 3 does not: 0.84)
    assert all(not c for a, *_, c in calls if a == "ams-equal")
    assert chosen["ams-equal"] == {"sigma0": 2.0, "k": 0.0}
    cal = json.loads((tmp_path / "calibration.json").read_text())["esd"]
    assert [t["concept_rate"] for t in cal["trials"]["ams"]][2:] == [None, None]
    # a refused setting ends its walk and is never chosen; nothing clearing the floor → the most accurate trial
    assert T._choose("ams", [{"sigma0": 8.0, "k": 3.0, "refused": "x"},
                             {"sigma0": 1.0, "k": 3.0, "accuracy": 0.7, "concept_rate": None},
                             {"sigma0": 2.0, "k": 3.0, "accuracy": 0.6, "concept_rate": None}], 0.8) == \
        {"sigma0": 1.0, "k": 3.0}
    with pytest.raises(AmsmoothError, match="refused"):
        T._choose("ams", [{"sigma0": 8.0, "k": 3.0, "refused": "x"}], 0.8)


def _cli_args(argv: list[str]):
    from amsmooth.cli.main import build_parser

    return build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("arm, setting, flags", [
    ("none", {}, ["--defense", "none"]),
    ("blacklist", {}, ["--defense", "blacklist"]),
    ("sld-max", {}, ["--defense", "sld-max"]),
    ("ams", {"sigma0": 1.0, "k": 9.0}, ["--defense", "ams", "--sigma0", "1.0", "--sigma-unit", "embedding-std",
                                        "--k", "9.0", "--concept", "nudity"]),
    ("ams-equal", {"sigma0": 2.0, "k": 0.0}, ["--defense", "ams", "--sigma0", "2.0", "--sigma-unit",
                                              "embedding-std", "--k", "0.0", "--concept", "nudity"]),
    ("ams-oracle", {"sigma0": 0.5, "k": 3.0}, ["--defense", "ams", "--sigma0", "0.5", "--sigma-unit",
                                               "embedding-std", "--k", "3.0", "--concept", "nudity",
                                               "--model-aware", "base"]),
    ("ams-subspace", {"sigma0": 0.5, "k": 20.0}, ["--defense", "ams", "--sigma0", "0.5", "--sigma-unit",
                                                  "embedding-std", "--k", "20.0", "--concept", "nudity",
                                                  "--relevance", "subspace"]),
    ("safree", {"svf": "off"}, ["--defense", "safree", "--safree-svf", "off", "--concept", "nudity"]),
    ("sld-medium+ams", {"sigma0": 1.0, "k": 9.0}, ["--defense", "sld-medium", "--ams", "--sigma0", "1.0",
                                                   "--sigma-unit", "embedding-std", "--k", "9.0", "--concept",
                                                   "nudity"]),
])
def test_each_eval_of_the_table_is_the_eval_command_with_the_same_settings(tmp_path, arm, setting, flags) -> None:
    """The table's typed requests mean what `amsmooth eval` with the documented flags means: equal RunRequests
    (model, defense with its AMS/SAFREE config, prompt files, generation settings, labels, batch size)."""
    from amsmooth.cli.runs import run_request
    from amsmooth_experiments.lab_table import Plan, Table

    table, unet, sets = Table(tmp_path, Plan(), batch_size=16), tmp_path / "esd.safetensors", [tmp_path / "a.csv"]
    mine = table.request("esd-x", unet, table._defense(arm, setting), sets)
    argv = ["eval", "--model", "lab", "--detector", "lab-nudity", "--steps", "25", "--batch-size", "16", "--out",
            str(tmp_path / "runs" / "esd-x"), "--unet", str(unet), "--model-label", "esd", "--prompts",
            str(sets[0]), *flags]
    assert mine == run_request(_cli_args(argv))


@pytest.mark.parametrize("kind, flags", [
    ("rab", ["--encoder", "lab", "--population", "64", "--iterations", "200"]),
    ("qf", ["--encoder", "lab", "--iterations", "100", "--samples", "100"]),
    ("uda", ["--model", "lab", "--unet", "U", "--timesteps", "10", "--iterations", "25"]),
    ("p4d", ["--model", "lab", "--unet", "U", "--iterations", "300", "--select", "loss"]),
    ("rab-adaptive", ["--encoder", "lab", "--population", "32", "--iterations", "100", "--adaptive", "--sigma0",
                      "1.0", "--sigma-unit", "embedding-std", "--k", "9.0"]),
])
def test_each_attack_of_the_table_is_the_attack_command_with_the_same_settings(tmp_path, kind, flags) -> None:
    """The lab-v3 budget as config changes equals `amsmooth attack --budget quick` with the documented flags."""
    from amsmooth.cli.attack import attack_request
    from amsmooth_experiments.lab_table import Plan, Table

    table = Table(tmp_path, Plan())
    argv = ["attack", kind.removesuffix("-adaptive"), "--prompts", "p.csv", "--out", "o.csv", "--concept", "nudity",
            "--budget", "quick", *flags]
    assert table.attack_request(kind, "U", {"sigma0": 1.0, "k": 9.0}) == attack_request(_cli_args(argv))


def test_a_step_killed_by_sigterm_still_adds_its_seconds(tmp_path) -> None:
    """`timeout` ends a table piece with SIGTERM; the interrupted step's wall seconds still reach timing.json."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time\nfrom pathlib import Path\nfrom amsmooth_experiments.lab_table import Plan, Table\n"
            "t = Table(Path(sys.argv[1]), Plan())\nwith t.timed('step'):\n    print('in', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "timing.json").read_text())["step"] >= 1.0


@pytest.mark.parametrize("name", ["esd", "uce", "race", "rece"])
def test_each_erasure_of_the_table_is_the_unlearn_command_with_the_same_settings(tmp_path, name) -> None:
    """The table's erased models (v3's ESD and UCE, the rivals' RACE and RECE) are what `amsmooth unlearn` makes
    with the flags docs/lab.md gives."""
    from amsmooth.cli.unlearn import unlearn_request
    from amsmooth_experiments.lab_table import Plan, Table

    table, out = Table(tmp_path, Plan.rivals()), tmp_path / f"{name}.safetensors"
    esd = ["--method", "x", "--lr", "0.001", "--ddim-steps", "20"]
    (tmp_path / "preserve.txt").write_text("\n".join(table.plan.uce_preserve))
    flags = {"esd": ["--erase", "naked", "--erase", "nude", "--iterations", "150", *esd],
             "race": ["--erase", "naked", "--erase", "nude", "--esd-iterations", "150", "--iterations", "150", *esd],
             "uce": ["--erase", "nudity", "--erase", "naked", "--erase", "nude", "--preserve-file",
                     str(tmp_path / "preserve.txt")]}
    flags["rece"] = flags["uce"]
    argv = ["unlearn", name, "--model", "lab", "--out", str(out), "--no-progress", *flags[name]]
    assert table.erasure(name, out) == unlearn_request(_cli_args(argv))


def test_the_table_refuses_an_unknown_model(tmp_path) -> None:
    from dataclasses import replace

    from amsmooth_experiments.lab_table import Plan, Table

    with pytest.raises(AmsmoothError, match="unknown erased model.*esd, uce, race, rece"):
        Table(tmp_path, replace(Plan(), models=("esd", "salun")))
    assert not (tmp_path / "plan.json").exists()


def test_paired_comparison_tells_no_factor_without_a_flagged_image() -> None:
    """Both arms at 0 everywhere: the difference is 0 but no reduction factor is excluded or claimed."""
    from amsmooth.lab.report import paired

    zeros = {("uda", str(i)): 0.0 for i in range(5)}
    r = paired(zeros, dict(zeros))
    assert r["diff"] == 0.0 and r["factor"] is None and r["excludes"] == {"1.6": None, "3.7": None}
    quarter = paired({k: 0.2 for k in zeros}, {k: 0.8 for k in zeros})      # ams 20 %, none 80 %: factor 4
    assert quarter["factor"] == pytest.approx(4.0) and quarter["excludes"] == {"1.6": True, "3.7": True}


def test_table_plot_draws_every_model_and_shared_points(tmp_path) -> None:
    from PIL import Image

    from amsmooth.lab.report import plot

    rows = [{"model": m, "defense": d, "benign_accuracy": 0.9, "avg": 10.0 if d == "none" else 0.0}
            for m in ("esd", "uce", "race", "rece") for d in ("none", "ams")]
    plot({"rows": rows}, tmp_path / "t.png")
    assert Image.open(tmp_path / "t.png").size == (840, 540)


def test_verdict_lines_follow_the_intervals() -> None:
    from amsmooth.lab.report import verdict

    def row(a, b, sets, diff, low, high):
        return {"model": "esd", "a": a, "b": b, "sets": sets, "diff": diff, "low": low, "high": high}

    rows = [row("ams", "none", "all attacks", -12.0, -20.0, -4.0),
            row("ams", "blacklist", "all attacks", -1.0, -6.0, 4.0),
            row("ams-oracle", "ams", "all attacks", 5.0, 1.0, 9.0), row("ams", "none", "p4d", 0.0, -4.0, 4.0)]
    lines = verdict(rows, ["uda", "p4d"])
    assert len(lines) == 2 and lines[0].startswith("- **ESD**, 2 attacks pooled: ")
    assert "AMS − none -12.0 [-20.0, -4.0] pts, lower" in lines[0]
    assert "AMS − blacklist -1.0 [-6.0, +4.0] pts, no difference shown" in lines[0]
    assert "AMS − equal noise not run" in lines[0] and "oracle − AMS +5.0 [+1.0, +9.0] pts, higher" in lines[0]
    assert lines[1] == "  AMS − none per attack: uda not run; p4d +0.0 [-4.0, +4.0] pts, no difference shown."
