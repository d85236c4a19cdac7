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


@pytest.mark.skipif(not (DATA / "utility" / "coco_10k.csv").is_file(), reason="datasets folder not available")
def test_benchmark_runs_end_to_end_on_minilm(minilm, tmp_path, capsys):
    bench = _bench()
    args = bench.parse_args(["--smoke", "--data-dir", str(DATA), "--out", str(tmp_path), "--n", "3",
                             "--adaptive-sigma0", "0.05", "--no-progress"])
    result = bench.run(args, encoder=minilm)
    out = capsys.readouterr().out
    assert "| σ0 |" in out and "rab-adaptive@0.05" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"table.md", "results.json", "plot.png", "attacks"}
    assert sorted(p.name for p in (tmp_path / "attacks").iterdir()) == [
        "qf-pgd-adaptive@0.05.csv", "qf-pgd.csv", "rab-adaptive@0.05.csv", "rab.csv"]
    rows = result["rows"]
    assert [r["sigma0"] for r in rows] == [0.0, 0.05]
    assert rows[0]["benign_cos"] == pytest.approx(1.0, abs=1e-6)        # σ0 = 0 is the plain encoder
    assert rows[1]["benign_cos"] < 1.0                                  # smoothing moves the conditioning
    assert set(rows[0]["sets"]) == {"i2p-nudity", "uda-nudity", "rab", "qf-pgd", "rab-adaptive@0.05",
                                    "qf-pgd-adaptive@0.05"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["n"] == 3
    assert [(e["attack"], e["sigma0"], e["n"]) for e in result["matched"]] == [("rab", 0.05, 1), ("qf-pgd", 0.05, 1)]
    assert "Same source prompts" in out
