"""The overhead benchmark's arithmetic and its CLI on a tiny size (timings themselves are not asserted)."""
from __future__ import annotations

import pytest

from amsmooth_experiments.bench import Report, format_report, project


def _components(**over: float) -> dict:
    c = {"text_cond": 1.0, "text_uncond": 1.0, "relevance_local_cold": 2.0, "relevance_local_warm": 0.0,
         "relevance_global_cold": 4.0, "relevance_global_warm": 2.0, "noisy_encodings": 3.0, "median": 0.5,
         "unet_2": 10.0, "unet_3": 15.0, "unet_naive": 70.0, "vae": 5.0, "calls_relevance_local_cold": 1,
         "calls_relevance_local_warm": 0, "calls_relevance_global_cold": 1, "calls_relevance_global_warm": 1,
         "calls_noisy": 1, "safree_text": 0.25}
    c.update(over)
    return c


def test_projection_arithmetic():
    p = project(_components(), steps=50, n=13)
    assert p["w/o defense"] == 2.0 + 500 + 5
    assert p["AMS (ours)"] == 1.0 + 3.0 + 0.5 + 2.0 + 505       # uncond + noisy + median + relevance + U-Net/VAE
    assert p["AMS, warm word cache"] == 1.0 + 3.0 + 0.5 + 505
    assert p["SLD"] == 2.0 + 1.0 + 50 * 15 + 5
    assert p["U-Net-level median (n=13)"] == 2.0 + 3.0 + 50 * 70 + 5
    assert p["SAFREE"] == 2.0 + 0.25 + 505                        # plain text + SAFREE's text stage
    assert p["SAFREE + latent re-attention"] == 2.0 + 0.25 + 50 * 15 + 5   # the plain prompt's third U-Net row
    assert p["SAFREE + AMS"] == p["AMS (ours)"] + 0.25


def test_safree_text_time_runs_on_the_tiny_components():
    import torch

    from amsmooth.models.tiny import tiny_components
    from amsmooth_experiments.bench import safree_text_time

    assert safree_text_time(tiny_components(), torch.device("cpu")) > 0


def test_report_prints_projected_line():
    r = Report({"device": "cpu", "dtype": "float32", "size": 512, "steps": 50, "e2e_size": 64, "e2e_steps": 2,
                "n": 13, "quick": True, "threads": 2}, _components(),
               {"w/o defense": 10.0, "AMS (ours)": 10.5}, {"w/o defense": 100.0, "AMS (ours)": 105.0},
               {}, _components())
    text = format_report(r)
    assert "projected 512 px / 50 steps: AMS +0.89 %" in text
    assert "| AMS (ours) | 10.500 | 1.0500 | 0 | 1.050 |" in text


def test_profile_shows_the_text_stage_ops():
    from amsmooth.models.tiny import tiny_text_encoder
    from amsmooth_experiments.bench import profile_text_stage

    table = profile_text_stage(tiny_text_encoder(), n=3)
    for op in ("aten::addmm", "aten::median", "Self CPU time total"):   # encoder matmuls, the median, the total
        assert op in table


@pytest.mark.slow   # 138 s: the real benchmark on the lab; batch identity itself: tests/test_batching.py
def test_batching_benchmark_reports_speedup_and_identity(capsys):
    from amsmooth.cli.main import main

    assert main(["bench", "--batching", "tiny", "--batch-sizes", "1", "4", "--e2e-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "## Batched generation (tiny, defense ams, 16 prompts, 2 steps" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 and all(line.rstrip().endswith("| yes |") for line in rows)
