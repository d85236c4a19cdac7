"""The embedding-space robustness benchmark end to end on the real MiniLM, at its smoke size."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AMSMOOTH_DATA_DIR", ROOT.parent / "shared" / "datasets"))


def _bench():
    """benchmarks/robustness/run.py as a module (it is a script, not part of the package)."""
    if "robustness_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("robustness_run", ROOT / "benchmarks" / "robustness" / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module              # dataclasses look their module up while being defined
        spec.loader.exec_module(module)
    return sys.modules["robustness_run"]


def test_concept_score_is_a_benign_z_score_of_the_pooled_projection():
    bench = _bench()
    axis = torch.tensor([1.0, 0.0])
    h = torch.tensor([[[1.0, 5.0], [3.0, 0.0], [99.0, 99.0]],
                      [[3.0, -1.0], [5.0, 2.0], [-99.0, 7.0]]])                  # [B=2, L=3, D=2]
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])                                  # the last position is padding
    proj = bench.projections(h, mask, axis)
    assert proj.tolist() == pytest.approx([2.0, 4.0])
    ref = bench.reference_stats(proj)
    assert ref.mean == pytest.approx(3.0) and ref.std == pytest.approx(2 ** 0.5)
    assert bench.concept_scores(proj, ref).tolist() == pytest.approx([-(0.5 ** 0.5), 0.5 ** 0.5])
    assert bench.auc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    assert bench.benign_cosine(h, h).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.slow   # 73 s: the robustness benchmark end to end on MiniLM
@pytest.mark.skipif(not (DATA / "utility" / "coco_10k.csv").is_file(), reason="datasets folder not available")
def test_benchmark_runs_end_to_end_on_minilm(minilm, tmp_path, capsys):
    bench = _bench()
    args = bench.parse_args(["--smoke", "--data-dir", str(DATA), "--out", str(tmp_path), "--n", "3",
                             "--adaptive-sigma0", "0.05", "--no-progress"])
    result = bench.run(args, encoder=minilm)
    out = capsys.readouterr().out
    assert "| σ0 |" in out and "rab-adaptive@0.05" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"table.md", "results.json", "plot.png", "attacks"}
    # (each attack CSV has its hidden `.NAME.claims` file beside it: several runs may share one --out)
    assert sorted(p.name for p in (tmp_path / "attacks").iterdir() if not p.name.startswith(".")) == [
        "concept-pgd-adaptive@0.05-s0.csv", "concept-pgd-s0.csv", "rab-adaptive@0.05-s0.csv", "rab-s0.csv"]
    rows = result["rows"]
    assert [r["sigma0"] for r in rows] == [0.0, 0.05]
    assert rows[0]["benign_cos"] == pytest.approx(1.0, abs=1e-6)        # σ0 = 0 is the plain encoder
    assert rows[1]["benign_cos"] < 1.0                                  # smoothing moves the conditioning
    assert set(rows[0]["sets"]) == {"i2p-nudity", "uda-nudity", "rab", "concept-pgd", "rab-adaptive@0.05",
                                    "concept-pgd-adaptive@0.05"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["n"] == 3
    matched = result["matched"]
    assert [(e["attack"], e["sigma0"], e["prompts"], e["seeds"]) for e in matched] == [
        ("rab", 0.05, 2, 1), ("concept-pgd", 0.05, 2, 1)]
    for e in matched:                                                   # CIs around their means, paired drops
        for label in ("plain", "adaptive"):
            r = e[label]
            assert r["under_ams"]["low"] <= r["under_ams"]["mean"] <= r["under_ams"]["high"]
            assert r["drop"]["mean"] == pytest.approx(r["under_ams"]["mean"] - r["no_defense"]["mean"])
    assert "Same source prompts" in out and "adaptive − plain" in out


def test_matched_table_pairs_prompts_and_averages_seeds():
    """Row k·N + i is prompt i under seed k: scores are averaged per prompt over seeds, then bootstrapped."""
    bench = _bench()
    axis = torch.tensor([1.0, 0.0])
    ref = bench.Reference(0.0, 1.0, 2.0)
    # 2 seeds × 3 prompts; one position, the score is the first coordinate
    plain = torch.tensor([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
    adapt = plain + 1.0
    h = {s: {name: torch.stack([torch.tensor([[v * (0.5 if s else 1.0), 0.0]]) for v in vals])
             for name, vals in (("rab", plain), ("rab-adaptive@0.1", adapt))} for s in (0.0, 0.1)}
    masks = {name: torch.ones(6, 1) for name in ("rab", "rab-adaptive@0.1")}
    sets = {"rab": ["x"] * 6, "rab-adaptive@0.1": ["y"] * 6}
    [e] = bench.matched_adaptive(h, masks, axis, ref, sets, seeds=2)
    assert e["prompts"] == 3 and e["seeds"] == 2
    assert e["plain"]["no_defense"]["mean"] == pytest.approx(3.0)            # per prompt: 2, 3, 4
    assert e["plain"]["under_ams"]["mean"] == pytest.approx(1.5)
    assert e["adaptive_minus_plain_under_ams"]["mean"] == pytest.approx(0.5)
    assert e["adaptive_minus_plain_under_ams"]["low"] == pytest.approx(0.5)  # constant difference: zero width
