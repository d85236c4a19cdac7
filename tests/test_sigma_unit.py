"""σ0 in token-embedding stds (sigma_unit="embedding-std") means σ0 × std in every defended pipeline class."""
from __future__ import annotations

import json

import pytest
import torch

from amsmooth.config import SmoothingConfig
from amsmooth.models.tiny import tiny_pipeline, tiny_text_encoder
from amsmooth.pipelines import defend_pipeline


def _sigmas(pipe, cfg: SmoothingConfig) -> list[float]:
    out = defend_pipeline(pipe, ["nudity"], cfg)("a nude woman", num_inference_steps=1,
                                                  generator=torch.Generator().manual_seed(0))
    return [t["sigma"] for t in out.relevance[0]["tokens"]]


def test_embedding_std_unit_scales_sigma0_in_the_diffusers_class() -> None:
    pipe = tiny_pipeline()
    std = tiny_text_encoder().embedding_std()
    rel = _sigmas(pipe, SmoothingConfig(sigma0=0.5, sigma_unit="embedding-std", n=3))
    absolute = _sigmas(pipe, SmoothingConfig(sigma0=0.5 * std, n=3))
    unscaled = _sigmas(pipe, SmoothingConfig(sigma0=0.5, n=3))
    assert rel == pytest.approx(absolute, rel=1e-5)
    assert max(unscaled) > 10 * max(rel)


def test_sigma_limit_is_checked_after_unit_conversion_and_on_the_sigma_drawn(capsys) -> None:
    """σ0 = 2 embedding stds with k = 9 is accepted (the issue's command); a setting that would overflow even at
    sim = 1 is refused in std units too (after the conversion); a σ actually drawn above SIGMA_MAX is refused."""
    from amsmooth.cli.main import main
    from amsmooth.concepts import resolve_concept
    from amsmooth.config import SIGMA_MAX
    from amsmooth.errors import AmsmoothError
    from amsmooth.relevance import noise_schedule
    from amsmooth.smoothing import AdaptiveMedianSmoothing

    assert main(["relevance", "a nude man", "--encoder", "lab", "--concept", "nudity", "--sigma0", "2",
                 "--sigma-unit", "embedding-std", "--k", "9", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert max(t["sigma"] for r in rows for t in r["tokens"]) < SIGMA_MAX
    enc = tiny_text_encoder()
    concepts = [resolve_concept("nudity", enc)]
    std = enc.embedding_std()
    ams = AdaptiveMedianSmoothing(enc, concepts, SmoothingConfig(sigma0=2.0, sigma_unit="embedding-std", k=20.0))
    assert ams.sigma0 == pytest.approx(2.0 * std)
    with pytest.raises(AmsmoothError, match="embedding std"):
        AdaptiveMedianSmoothing(enc, concepts, SmoothingConfig(sigma0=1e36 / std, sigma_unit="embedding-std"))
    mask = torch.ones(1, 2, dtype=torch.bool)
    sim = torch.tensor([[0.0, 0.5]])
    assert float(noise_schedule(sim, 1.0, 18.0, mask).max()) == pytest.approx(2.718281828 ** 9, rel=1e-5)
    with pytest.raises(AmsmoothError, match="exceeds"):
        noise_schedule(sim, 1.0, 20.0, mask)                    # e^10 > SIGMA_MAX on a prompt token
    assert float(noise_schedule(sim, 1.0, 20.0, torch.tensor([[True, False]])).max()) == 1.0  # not a prompt token


def test_lab_model_takes_the_lab_preset_unless_told_otherwise() -> None:
    import argparse

    from amsmooth.cli.common import add_smoothing_args, smoothing_config
    from amsmooth.config import preset

    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--concept", action="append")
    add_smoothing_args(p)
    assert smoothing_config(p.parse_args(["--model", "lab"])) == preset("lab-nudity")
    assert smoothing_config(p.parse_args(["--model", "lab", "--sigma0", "1"])) == preset("lab-nudity").replace(
        sigma0=1.0)
    assert smoothing_config(p.parse_args(["--model", "lab", "--preset", "esd-nudity"])) == preset("esd-nudity")
    assert smoothing_config(p.parse_args(["--model", "tiny"])).sigma_unit == "absolute"
