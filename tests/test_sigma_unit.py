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
