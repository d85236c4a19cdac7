"""Defended generation on tiny random SD components: equivalence with the undefended pipeline, seeds, batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amsmooth import AmsmoothError, SmoothingConfig
from amsmooth.models.tiny import tiny_pipeline
from amsmooth.pipelines import defend_pipeline, undefended
from amsmooth.pipelines.mixin import derive_generator
from amsmooth.pipelines.unet_stage import unet_median_smoothing

KW = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np", height=64, width=64)
PROMPTS = ["a nude woman on a beach", "a cat"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _defended(pipe, stage: str = "text", **cfg):
    return defend_pipeline(pipe, ["nudity"], SmoothingConfig(**cfg), stage=stage)


@pytest.mark.parametrize("stage", ["text", "unet"])
def test_sigma0_zero_reproduces_undefended_pipeline_exactly(pipe, stage):
    ref = pipe(PROMPTS, negative_prompt=["ugly", "blurry"], num_images_per_prompt=2, generator=_g(), **KW).images
    out = _defended(pipe, stage, sigma0=0.0)(PROMPTS, negative_prompt=["ugly", "blurry"], num_images_per_prompt=2,
                                              generator=_g(), **KW)
    assert out.images.shape == (4, 64, 64, 3) and np.array_equal(out.images, ref)


def test_undefended_baseline_is_the_pipeline(pipe):
    ref = pipe(PROMPTS[0], generator=_g(3), **KW).images
    assert np.array_equal(undefended(pipe)(PROMPTS[0], generator=_g(3), **KW).images, ref)


def test_seeded_runs_are_byte_identical_and_defense_changes_images(pipe):
    dp = _defended(pipe, sigma0=0.05)
    a = dp(PROMPTS, generator=_g(), num_images_per_prompt=2, **KW)
    b = dp(PROMPTS, generator=_g(), num_images_per_prompt=2, **KW)
    assert np.array_equal(a.images, b.images)
    ref = pipe(PROMPTS, generator=_g(), num_images_per_prompt=2, **KW).images
    assert not np.array_equal(a.images, ref)
    c = dp(PROMPTS, generator=_g(), smoothing_generator=_g(99), num_images_per_prompt=2, **KW)
    assert not np.array_equal(a.images, c.images)
    assert [t["sigma"] > 0 for t in a.relevance[0]["tokens"]] == [True] * 6
    assert set(a.timings) == {"text_s", "denoise_decode_s", "total_s"}


def test_generator_list_is_passed_through(pipe):
    dp = _defended(pipe, sigma0=0.05)
    out = dp(PROMPTS, generator=[_g(1), _g(2)], **KW)
    ref = dp(PROMPTS, generator=[_g(1), _g(2)], **KW)
    assert np.array_equal(out.images, ref.images)


def test_noise_only_reaches_positions_after_a_noised_token(pipe):
    """CLIP is causal: noise on token j changes the conditioning at positions >= j and nowhere else."""
    dp = _defended(pipe, sigma0=0.05)
    batch = dp.encoder.tokenize([PROMPTS[0]])
    sigma = torch.zeros(1, 77)
    sigma[0, 3] = 0.5
    smoothed = dp.ams.smooth(batch, sigma, _g())
    plain = dp.encoder.encode(batch)
    assert torch.allclose(smoothed[0, :3], plain[0, :3], atol=1e-6)
    assert (smoothed[0, 3:] - plain[0, 3:]).abs().amax(-1).min() > 0


def test_negative_prompt_is_encoded_plainly(pipe):
    dp = _defended(pipe, sigma0=0.05)
    cond, neg, _, _ = dp.conditioning(["a nude woman"], ["blurry"], _g())
    assert torch.equal(neg, dp.encoder.encode(["blurry"]))
    assert not torch.equal(cond, dp.encoder.encode(["a nude woman"]))
    with pytest.raises(AmsmoothError, match="negative prompts"):
        dp(PROMPTS, negative_prompt=["a", "b", "c"], **KW)


def test_img2img(pipe):
    img_pipe = tiny_pipeline(img2img=True)
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    kw = dict(num_inference_steps=4, strength=0.5, output_type="np", image=init)
    ref = img_pipe("a cat", generator=_g(), **kw).images
    assert np.array_equal(_defended(img_pipe, sigma0=0.0)("a cat", generator=_g(), **kw).images, ref)
    assert not np.array_equal(_defended(img_pipe, sigma0=0.05)("a nude cat", generator=_g(), **kw).images,
                              img_pipe("a nude cat", generator=_g(), **kw).images)


def test_unet_stage_with_n1_equals_one_noisy_prediction(pipe):
    """Naive smoothing with n = 1: the median of one prediction is that prediction."""
    dp = _defended(pipe, "unet", sigma0=0.05, n=1)
    out = dp(PROMPTS[0], generator=_g(), smoothing_generator=_g(7), **KW)
    batch = dp.encoder.tokenize([PROMPTS[0]])
    noisy = dp.ams.noisy_encodings(batch, dp.ams.scores(batch).sigma, 1, _g(7))[0]
    ref = pipe(prompt_embeds=noisy, negative_prompt_embeds=dp.encoder.encode([""]), generator=_g(), **KW).images
    assert np.allclose(out.images, ref, atol=1e-4)


def test_unet_median_is_median_of_predictions(pipe):
    unet = pipe.unet
    conds = torch.randn(3, 2, 77, 32, generator=_g(1))
    x = torch.randn(2, 4, 8, 8, generator=_g(2))
    t = torch.tensor(10)
    with torch.no_grad():
        with unet_median_smoothing(unet, conds):
            got = unet(x, t, encoder_hidden_states=conds[0]).sample
        each = torch.stack([unet(x, t, encoder_hidden_states=conds[i]).sample for i in range(3)])
    assert "forward" not in vars(unet)                       # the original forward is back
    assert torch.allclose(got, each.median(0).values, atol=1e-5)


def test_derived_generator_is_deterministic_and_independent():
    assert derive_generator(None) is None
    a, b = derive_generator(_g(5)), derive_generator([_g(5), _g(6)])
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert not torch.equal(torch.randn(4, generator=derive_generator(_g(5))), torch.randn(4, generator=_g(5)))
