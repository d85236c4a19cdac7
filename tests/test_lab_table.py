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


@shipped
def test_lab_table_smoke(tmp_path) -> None:
    from amsmooth.lab.table import Plan, Table

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
    assert cal["uce"]["chosen"]["ams-equal"]["k"] == 0.0 and len(cal["uce"]["trials"]["ams-equal"]) == 2
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
    assert (tmp_path / "runs" / "calibration" / "uce-none" / "images" / "calibration-rab").is_dir()
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

    from amsmooth.lab.table import Plan, Table

    paths = Table(tmp_path, Plan(prompts=4, attack_prompts=4, seeds=(0, 1, 2))).prompts()

    def prompts(name: str) -> list[str]:
        with paths[name].open() as f:
            return [r["prompt"] for r in csv.DictReader(f)]
    train, sources = prompts("train"), prompts("attack-source")
    assert len(train) == 12 and len(sources) == len(set(sources)) == 4 and set(sources) == set(train)
