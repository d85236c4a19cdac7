"""σ0 in token-embedding stds (sigma_unit="embedding-std") means σ0 × std in every defended pipeline class."""
from __future__ import annotations

import pytest
import torch

from amsmooth.config import SmoothingConfig
from amsmooth.pipeline import DefendedPipeline
from amsmooth.tiny import tiny_pipeline, tiny_text_encoder


def _sigmas(pipe, cfg: SmoothingConfig) -> list[float]:
    out = DefendedPipeline.from_pipeline(pipe, ["nudity"], cfg)("a nude woman", num_inference_steps=1,
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


def test_sigma_limit_is_checked_after_unit_conversion() -> None:
    """σ0 = 2 embedding stds with k = 9 is ≈ 2·std·e^9 at most (far under SIGMA_MAX): accepted, while the same
    σ0 read as absolute exceeds it; the limit still binds in std units once σ0·std·e^|k| passes it."""
    from amsmooth.concepts import resolve_concept
    from amsmooth.config import SIGMA_MAX
    from amsmooth.errors import AmsmoothError
    from amsmooth.smoothing import AdaptiveMedianSmoothing

    enc = tiny_text_encoder()
    concepts = [resolve_concept("nudity", enc)]
    std = enc.embedding_std()
    assert 2 * std * 2.718281828 ** 9 < SIGMA_MAX < 2 * 2.718281828 ** 9
    ams = AdaptiveMedianSmoothing(enc, concepts, SmoothingConfig(sigma0=2.0, sigma_unit="embedding-std", k=9.0))
    assert ams.sigma0 == pytest.approx(2.0 * std)
    with pytest.raises(AmsmoothError, match="exceeds"):
        SmoothingConfig(sigma0=2.0, k=9.0)                      # absolute: refused at the config
    too_big = SIGMA_MAX / std * 2.718281828 ** -9 * 1.01
    with pytest.raises(AmsmoothError, match="embedding std"):
        AdaptiveMedianSmoothing(enc, concepts, SmoothingConfig(sigma0=too_big, sigma_unit="embedding-std", k=9.0))


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
