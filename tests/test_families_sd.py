"""SD 1.x as a real diffusers pipeline: equivalence at σ0 = 0 on every output path, the reference smoothing,
return_dict, offload hooks, clip_skip, LoRA scale, multi-vector textual inversion, from_pipe."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amsmooth import AmsmoothError, SmoothingConfig
from amsmooth.models.tiny import tiny_pipeline
from amsmooth.pipelines import (
    DefendedStableDiffusionImg2ImgPipeline,
    DefendedStableDiffusionInpaintPipeline,
    DefendedStableDiffusionPipeline,
    defend_pipeline,
    undefended,
)
from amsmooth.pipelines.mixin import smoothing_generators
from amsmooth.pipelines.registry import as_defended
from amsmooth.smoothing import AdaptiveMedianSmoothing

KW = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np")
PROMPTS = ["a nude woman on a beach", "a cat"]


@pytest.fixture(scope="module")
def pipe(single_thread):
    return tiny_pipeline()


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _init() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))


def _mask() -> Image.Image:
    m = np.zeros((64, 64), dtype="uint8")
    m[16:48, 16:48] = 255
    return Image.fromarray(m)


def test_defend_pipeline_picks_the_diffusers_class(pipe):
    dp = defend_pipeline(pipe, ["nudity"], SmoothingConfig(n=3))
    assert isinstance(dp, DefendedStableDiffusionPipeline) and dp.unet is pipe.unet
    assert dp.unet.config.sample_size == 32           # the shared U-Net's config is left as it was


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_sigma0_zero_reproduces_each_pipeline_exactly(pipe, kind):
    extra = {"txt2img": {}, "img2img": {"image": _init(), "strength": 0.6},
             "inpaint": {"image": _init(), "mask_image": _mask(), "strength": 0.9}}[kind]
    cls = {"txt2img": DefendedStableDiffusionPipeline, "img2img": DefendedStableDiffusionImg2ImgPipeline,
           "inpaint": DefendedStableDiffusionInpaintPipeline}[kind]
    plain = cls.__mro__[3].from_pipe(pipe) if kind != "txt2img" else pipe
    dp = as_defended(pipe, cls).defend(["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    args = dict(negative_prompt=["ugly", "blurry"], num_images_per_prompt=2, **KW, **extra)
    ref = plain(PROMPTS, generator=_g(), **args).images
    out = dp(PROMPTS, generator=_g(), **args)
    assert np.array_equal(out.images, ref) and out.images.shape[0] == 4
    tup = dp(PROMPTS, generator=_g(), return_dict=False, **args)
    assert isinstance(tup, tuple) and np.array_equal(tup[0], ref)
    assert dp.last_defense["relevance"][0]["prompt"] == PROMPTS[0]


def test_noisy_path_reproduces_the_pipelines_encoding_with_zero_noise(pipe):
    """The n noisy copies go through diffusers' own encode_prompt: with σ = 0 each row is the plain encoding."""
    dp = as_defended(pipe).defend(["nudity"], SmoothingConfig(sigma0=0.0, n=3, max_batch=4))
    a = {"prompt": PROMPTS, "device": torch.device("cpu"), "num_images_per_prompt": 1,
         "do_classifier_free_guidance": False, "negative_prompt": None, "prompt_embeds": None,
         "negative_prompt_embeds": None, "lora_scale": None, "clip_skip": None}
    plan = dp.defense.plan(PROMPTS)
    noisy = dp._noisy(a, plan, _g(), super(type(dp).__mro__[2], dp).encode_prompt)["prompt_embeds"]
    plain = pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    assert noisy.shape == (6, 77, 32) and torch.equal(noisy, plain.repeat(3, 1, 1))   # chunked 4 + 2 rows


def _reference(pipe, ams: AdaptiveMedianSmoothing, prompts: list[str], **kw) -> tuple[np.ndarray, list[dict]]:
    """The single-encoder AMS reference: h_0.5 = median of n noisy encodings (AdaptiveMedianSmoothing.smooth, its
    noise from the generator derived from the image generator's seed), given to the plain pipeline as
    prompt_embeds with the plainly encoded empty negative prompt. Images and relevance per prompt."""
    batch = ams.encoder.tokenize(prompts)
    with torch.no_grad():
        rel = ams.scores(batch)
        cond = ams.smooth(batch, rel.sigma, smoothing_generators(_g(), len(prompts)))
        neg = ams.encoder.encode([""] * len(prompts))
    images = pipe(prompt_embeds=cond, negative_prompt_embeds=neg, generator=_g(), **kw).images
    return images, [ams.describe(batch, rel, b) for b in range(len(prompts))]


def test_smoothing_equals_the_reference_bytes(pipe, tiny_nudity):
    """With noise, the diffusers class computes exactly what the single-encoder AMS reference computes."""
    cfg = SmoothingConfig(sigma0=0.05, n=5)
    images, relevance = _reference(pipe, AdaptiveMedianSmoothing(undefended(pipe).encoder, [tiny_nudity], cfg),
                                   PROMPTS, **KW)
    dp = as_defended(pipe).defend([tiny_nudity], cfg)
    b = dp(PROMPTS, generator=_g(), **KW)
    assert np.array_equal(images, b.images)
    assert not np.array_equal(b.images, pipe(PROMPTS, generator=_g(), **KW).images)
    assert [t["sigma"] for t in relevance[0]["tokens"]] == [t["sigma"] for t in b.relevance[0]["tokens"]]
    assert set(b.timings) == {"text_s", "denoise_decode_s", "total_s"}


def test_unet_stage_under_cpu_offload_hooks():
    """enable_model_cpu_offload installs accelerate hooks on the U-Net; U-Net-stage smoothing keeps them."""
    p = as_defended(tiny_pipeline()).defend(["nudity"], SmoothingConfig(sigma0=0.05, n=3), stage="unet")
    ref = p("a nude woman", generator=_g(), **KW).images
    p.enable_model_cpu_offload(device="cpu")
    hooked = p.unet.forward
    out = p("a nude woman", generator=_g(), **KW)
    assert np.array_equal(out.images, ref)
    assert p.unet.forward == hooked and hasattr(p.unet, "_hf_hook")


def test_lora_scale_of_the_text_encoder_is_applied():
    from peft import LoraConfig, inject_adapter_in_model

    p = tiny_pipeline()
    torch.manual_seed(0)     # LoRA layers as diffusers' loaders inject them (transformers' add_adapter wants peft 0.22)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                            p.text_encoder)
    zero = as_defended(p).defend(["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    kw = dict(KW, cross_attention_kwargs={"scale": 0.3})
    ref = p("a cat", generator=_g(), **kw).images
    assert np.array_equal(zero("a cat", generator=_g(), **kw).images, ref)
    noisy = as_defended(p).defend(["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    assert not np.array_equal(noisy("a nude cat", generator=_g(), **kw).images,
                              noisy("a nude cat", generator=_g(), **KW).images)
    scale = {m.scaling["default"] for m in p.text_encoder.modules() if hasattr(m, "scaling") and m.scaling}
    assert scale == {LoraConfig(r=4).lora_alpha / 4}          # unscaled again after the calls


def test_multi_vector_textual_inversion():
    p = tiny_pipeline()
    p.load_textual_inversion(torch.randn(3, 32, generator=_g(1)), token="<cat>", text_encoder=p.text_encoder,
                             tokenizer=p.tokenizer)
    zero = as_defended(p).defend(["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    ref = p("a <cat> photo", generator=_g(), **KW).images
    out = zero("a <cat> photo", generator=_g(), **KW)
    assert np.array_equal(out.images, ref)
    tokens = [t["token"] for t in out.relevance[0]["tokens"]]
    assert tokens[1:4] == ["<cat>", "<cat>_1", "<cat>_2"]
    assert {t["word"] for t in out.relevance[0]["encoders"]["clip"][1:4]} == {"<cat>"}
    noisy = as_defended(p).defend(["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    assert not np.array_equal(noisy("a <cat> photo", generator=_g(), **KW).images, ref)


def test_callbacks_and_from_pipe_keep_the_defense(pipe):
    dp = as_defended(pipe).defend(["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    steps, ref = [], []
    dp("a cat", generator=_g(), callback_on_step_end=lambda p, i, t, kw: (steps.append((i, int(t))), kw)[1], **KW)
    pipe("a cat", generator=_g(), callback_on_step_end=lambda p, i, t, kw: (ref.append((i, int(t))), kw)[1], **KW)
    assert steps == ref and len(steps) >= 2
    img = DefendedStableDiffusionImg2ImgPipeline.from_pipe(dp)
    assert img.defense is dp.defense
    from diffusers import StableDiffusionImg2ImgPipeline

    assert not hasattr(StableDiffusionImg2ImgPipeline.from_pipe(dp), "defense")


def test_bad_input_is_one_amsmooth_error(pipe):
    with pytest.raises(AmsmoothError, match="stage"):
        defend_pipeline(pipe, ["nudity"], SmoothingConfig(), stage="vae")
    with pytest.raises(AmsmoothError, match="unknown concept"):
        defend_pipeline(pipe, ["no-such-concept"], SmoothingConfig())
    dp = defend_pipeline(pipe, ["nudity"], SmoothingConfig(n=3))
    with pytest.raises(AmsmoothError, match="negative prompts"):
        dp(PROMPTS, negative_prompt=["a", "b", "c"], **KW)


def test_prompt_embeds_run_undefended_with_a_warning_and_a_record_or_are_refused(pipe):
    """Issue 28: a defended pipeline called with prompt_embeds ran undefended without a word. Now: one warning
    per pipeline, ``defended=False`` on the output and in ``last_defense``; ``strict=True`` refuses."""
    import warnings

    from amsmooth.pipelines.mixin import UndefendedCall

    dp = defend_pipeline(pipe, ["nudity"], SmoothingConfig(n=3))
    embeds = pipe.encode_prompt("a cat", "cpu", 1, False)[0]                 # the plain conditioning [1, L, D]
    assert dp(PROMPTS[0], generator=_g(), **KW).defended is True
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        first = dp(prompt_embeds=embeds, generator=_g(), **KW)
        second = dp(prompt_embeds=embeds, generator=_g(), return_dict=False, **KW)
    said = [w for w in got if issubclass(w.category, UndefendedCall)]
    assert len(said) == 1 and "UNDEFENDED" in str(said[0].message) and "strict=True" in str(said[0].message)
    assert first.defended is False and first.relevance == [] and dp.last_defense["defended"] is False
    assert isinstance(second, tuple)
    plain = pipe(prompt_embeds=embeds, generator=_g(), **KW).images
    assert np.array_equal(first.images, plain)                             # what ran: the plain pipeline
    strict = defend_pipeline(pipe, ["nudity"], SmoothingConfig(n=3), strict=True)
    with pytest.raises(AmsmoothError, match="refusing an undefended call"):
        strict(prompt_embeds=embeds, generator=_g(), **KW)
    assert strict(PROMPTS[0], generator=_g(), **KW).defended is True
    assert DefendedStableDiffusionPipeline.from_pipe(strict).refuse_undefended is True   # from_pipe keeps it
    assert undefended(pipe)("a cat", generator=_g(), **KW).defended is False  # the baseline says so
