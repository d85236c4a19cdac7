"""SLD on tiny components: diffusers' presets, the prompt_embeds seam, AMS on top of SLD (σ0 = 0 is plain SLD)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amsmooth import AmsmoothError, SmoothingConfig
from amsmooth.baselines.sld import SLD_PRESETS, SLDPipeline, sld_preset
from amsmooth.eval.defenses import DefenseSpec

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=2, height=64, width=64, output_type="np", num_images_per_prompt=2)
PROMPT = "a nude woman on the beach"


@pytest.fixture(scope="module")
def pipe():
    from amsmooth.models.tiny import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def sld(pipe):
    return SLDPipeline.from_pipeline(pipe, "sld-max")


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(3)


@pytest.fixture(scope="module")
def plain_sld(sld):
    return sld(PROMPT, generator=seeded(), **KW).images


def test_presets_are_diffusers_safety_configs():
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    assert [sld_preset(p) for p in SLD_PRESETS] == [SafetyConfig.WEAK, SafetyConfig.MEDIUM, SafetyConfig.STRONG,
                                                   SafetyConfig.MAX]
    with pytest.raises(AmsmoothError, match="unknown SLD preset"):
        sld_preset("sld-extreme")


def test_sld_shares_the_modules_and_changes_the_images(pipe, sld, plain_sld):
    assert sld.unet is pipe.unet and sld.text_encoder is pipe.text_encoder and sld.safety_checker is None
    undefended = pipe(PROMPT, generator=seeded(), **KW).images
    assert plain_sld.shape == undefended.shape == (2, 64, 64, 3)
    assert np.abs(plain_sld - undefended).max() > 1e-3   # safety guidance acts from step 0 under sld-max


def test_sld_keeps_the_pipelines_default_size(pipe, sld):
    """diffusers bumps a U-Net sample_size < 64 when it builds the SLD pipeline; the shared U-Net keeps its own."""
    assert pipe.unet.config.sample_size == sld.unet.config.sample_size == 32      # tiny: 64 px by default
    kw = {k: v for k, v in KW.items() if k not in ("height", "width")}
    assert sld(PROMPT, generator=seeded(), **{**kw, "num_inference_steps": 1}).images.shape[1:3] == (64, 64)


def test_prompt_embeds_reproduce_plain_sld_exactly(sld, plain_sld):
    """Given the plain prompt's embeddings instead of the text (AMS's seam), SLD gives the same bytes."""
    out = sld(prompt_embeds=_embeds(sld, PROMPT), negative_prompt_embeds=_embeds(sld, ""), generator=seeded(),
              **KW).images
    assert np.array_equal(out, plain_sld)


def _embeds(sld, prompt: str) -> torch.Tensor:
    """The plain CLIP encoding ``[1, 77, D]`` of ``prompt``."""
    ids = sld.tokenizer([prompt], padding="max_length", max_length=sld.tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return sld.text_encoder(ids)[0]


def test_ams_on_sld_sigma0_zero_is_plain_sld_and_noise_changes_it(pipe, sld, plain_sld, tiny_nudity):
    zero = SLDPipeline.from_pipeline(pipe, "sld-max", SmoothingConfig(sigma0=0.0, n=3), [tiny_nudity])
    assert np.array_equal(zero(PROMPT, generator=seeded(), **KW).images, plain_sld)
    noisy = SLDPipeline.from_pipeline(pipe, "sld-max", SmoothingConfig(sigma0=0.05, n=3), [tiny_nudity])
    out = noisy(PROMPT, generator=seeded(), **KW)
    assert np.abs(out.images - plain_sld).max() > 1e-4 and out.relevance[0]["tokens"] and out.defended
    assert "_encode_prompt" not in vars(noisy.safe)  # the wrap is removed after the call
    assert sld(PROMPT, generator=seeded(), **KW).defended is False


def test_without_guidance_only_the_conditional_block_is_replaced(sld, pipe):
    """guidance 1: SLD is off and its encoding is the conditional block alone; embeddings still reproduce it."""
    kw = {**KW, "guidance_scale": 1.0}
    with pytest.warns(UserWarning, match="Safety checker disabled"):
        plain = sld(PROMPT, generator=seeded(), **kw).images
        via = sld(prompt_embeds=_embeds(sld, PROMPT), generator=seeded(), **kw).images
    assert np.array_equal(plain, via)


def test_defense_spec_names_settings_and_combinations():
    ams = SmoothingConfig(concepts=("nudity",))
    spec = DefenseSpec.parse("sld-medium", ams)
    assert spec.name == "sld-medium+ams"
    settings = spec.settings()
    assert settings["sld_guidance_scale"] == 1000 and settings["sigma0"] == 0.006
    assert "max_batch" not in settings and settings["smoothing_stage"] == "text"
    assert DefenseSpec.parse("ams", ams).name == "ams" and DefenseSpec.parse("none").name == "none"
    assert DefenseSpec.parse("blacklist", ams).name == "blacklist+ams"
    for bad, match in [(("rot13",), "unknown defense"), (("ams",), "needs a smoothing config"),
                       (("sld-max", ams, "unet"), "does not combine with SLD"),
                       (("none", None, "unet"), "needs AMS")]:
        with pytest.raises(AmsmoothError, match=match):
            DefenseSpec.parse(*bad)


def test_sld_refuses_clip_skip_instead_of_ignoring_it():
    import torch

    from amsmooth.baselines.sld import SLDPipeline
    from amsmooth.models.tiny import tiny_pipeline

    sld = SLDPipeline.from_pipeline(tiny_pipeline(), "sld-max")   # the family classes pass clip_skip on
    with pytest.raises(AmsmoothError, match="clip_skip is not supported"):
        sld("a cat", clip_skip=1, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
