"""SDXL, SD3 and Flux (tiny, from the shipped scaled-down configs): σ0 = 0 reproduces each undefended pipeline
exactly through every output path; noise reaches every encoder; per-encoder scores combine by word."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from amsmooth import AmsmoothError, SmoothingConfig
from amsmooth.models.tiny import tiny_family_components, tiny_family_pipeline
from amsmooth.pipelines import ConceptBundle, defend_pipeline
from amsmooth.pipelines.registry import as_defended

FAMILIES = ["tiny-sdxl", "tiny-sd3", "tiny-flux"]
KW = dict(num_inference_steps=2, output_type="np")
PROMPT = "a nude woman, unclothed"


@pytest.fixture(scope="module")
def pipes(single_thread):
    return {name: tiny_family_pipeline(name) for name in FAMILIES}


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _extra(kind: str) -> dict:
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    mask = np.zeros((64, 64), dtype="uint8")
    mask[16:48, 16:48] = 255
    return {"txt2img": {}, "img2img": {"image": image, "strength": 0.6},
            "inpaint": {"image": image, "mask_image": Image.fromarray(mask), "strength": 0.9}}[kind]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_sigma0_zero_reproduces_each_pipeline_exactly(pipes, name, kind):
    from amsmooth.models.load import pipeline_class

    base = pipes[name] if kind == "txt2img" else as_defended(pipes[name], pipeline_class(
        {"tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}[name], kind))
    dp = defend_pipeline(base, ["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    assert type(dp).__name__ == f"Defended{type(base).__name__}"
    args = dict(num_images_per_prompt=2, **KW, **_extra(kind))
    ref = base(PROMPT, generator=_g(), **args).images
    out = dp(PROMPT, generator=_g(), **args)
    assert out.images.shape[0] == 2 and np.array_equal(out.images, ref)
    tup = dp(PROMPT, generator=_g(), return_dict=False, **args)
    assert isinstance(tup, tuple) and np.array_equal(tup[0], ref)


@pytest.mark.parametrize("name", FAMILIES)
def test_noisy_path_is_the_pipelines_own_encoding(pipes, name):
    """With zero noise the n copies encoded through diffusers' encode_prompt (sequence and pooled) equal the
    plain encoding row by row; chunking past max_batch changes nothing."""
    dp = defend_pipeline(pipes[name], ["nudity"], SmoothingConfig(sigma0=0.0, n=3, max_batch=2))
    base = super(type(dp).__mro__[2], dp).encode_prompt
    import inspect

    params = inspect.signature(base).parameters
    a = inspect.signature(base).bind(prompt=[PROMPT, "a cat"],
                                     **{k: None for k in ("prompt_2", "prompt_3") if k in params})
    a.apply_defaults()
    a = dict(a.arguments)
    if "do_classifier_free_guidance" in a:
        a["do_classifier_free_guidance"] = False
    plain = base(**a)
    noisy = dp._noisy(a, dp.defense.plan([PROMPT, "a cat"]), _g(), base)
    for idx, name_ in dp.OUTPUTS.items():
        assert torch.equal(noisy[name_], plain[idx].repeat(3, *[1] * (plain[idx].ndim - 1))), name_


@pytest.mark.parametrize("name", FAMILIES)
def test_noise_reaches_every_encoder_and_is_seeded(pipes, name):
    dp = defend_pipeline(pipes[name], ["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    a = dp(PROMPT, generator=_g(), **KW)
    b = dp(PROMPT, generator=_g(), **KW)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, pipes[name](PROMPT, generator=_g(), **KW).images)
    rel = a.relevance[0]
    assert set(rel["encoders"]) == set(dp.defense.names) and len(rel["encoders"]) >= 2
    for rows in rel["encoders"].values():
        assert rows and all(r["sigma"] > 0 for r in rows)
    words = [w["word"] for w in rel["words"]]
    assert words == ["a", "nude", "woman,", "unclothed"]
    for w in rel["words"]:         # combined = the best score any encoder gives the word
        assert w["sim"] == pytest.approx(max(w["sims"].values()), abs=1e-6)


def test_combination_rule_by_word(pipes):
    """A word flagged by one encoder is noised in all; a token keeps its own score when that is higher."""
    dp = defend_pipeline(pipes["tiny-sd3"], ["nudity"], SmoothingConfig(sigma0=0.01, k=5.0, n=3))
    plan = dp.defense.plan([PROMPT])
    clip_l, clip_g, t5 = plan.slots
    for s in plan.slots:
        s.sim_own.zero_()
        s.sim.zero_()
    nude_t5 = (t5.word[0] == 1).nonzero().flatten()
    assert len(nude_t5) >= 1
    t5.sim_own[0, nude_t5[0]] = 0.7        # only T5 flags "nude" (on one of its tokens)
    clip_g.sim_own[0, (clip_g.word[0] == 3).nonzero().flatten()] = 0.2    # clip-g flags "unclothed" mildly
    dp.defense._combine(plan)
    for s in (clip_l, clip_g):           # the other encoders: every token of the word takes T5's best
        assert torch.allclose(s.sim[0][s.word[0] == 1], torch.tensor(0.7))
    assert torch.equal(t5.sim[0][t5.word[0] == 1], t5.sim_own[0][t5.word[0] == 1])   # T5 keeps its own scores
    for s in (clip_l, clip_g, t5):
        assert torch.allclose(s.sim[0][s.word[0] == 0], torch.tensor(0.0))
        assert torch.allclose(s.sim[0][s.word[0] == 3], torch.tensor(0.2))


def test_sdxl_clip_skip_and_unet_stage(pipes):
    p = pipes["tiny-sdxl"]
    zero = defend_pipeline(p, ["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    ref = p(PROMPT, generator=_g(), clip_skip=1, **KW).images
    assert np.array_equal(zero(PROMPT, generator=_g(), clip_skip=1, **KW).images, ref)
    assert not np.array_equal(p(PROMPT, generator=_g(), **KW).images, ref)
    with pytest.raises(AmsmoothError, match="SD 1.x/2.x"):
        defend_pipeline(p, ["nudity"], SmoothingConfig(), stage="unet")


def test_sd3_short_t5_sequence(pipes):
    p = pipes["tiny-sd3"]
    zero = defend_pipeline(p, ["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    ref = p(PROMPT, generator=_g(), max_sequence_length=16, **KW).images
    assert np.array_equal(zero(PROMPT, generator=_g(), max_sequence_length=16, **KW).images, ref)
    noisy = defend_pipeline(p, ["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    out = noisy(PROMPT, generator=_g(), max_sequence_length=16, **KW)
    assert not np.array_equal(out.images, ref)


def test_flux_true_cfg_negative_stays_plain(pipes):
    p = pipes["tiny-flux"]
    zero = defend_pipeline(p, ["nudity"], SmoothingConfig(sigma0=0.0, n=3))
    kw = dict(KW, negative_prompt="blurry", true_cfg_scale=2.0)
    assert np.array_equal(zero(PROMPT, generator=_g(), **kw).images, p(PROMPT, generator=_g(), **kw).images)
    noisy = defend_pipeline(p, ["nudity"], SmoothingConfig(sigma0=0.05, n=3))
    calls = []
    diffusers_cls = next(c for c in type(noisy).__mro__ if c.__module__.startswith("diffusers"))
    orig = diffusers_cls.encode_prompt

    @functools.wraps(orig)           # keeps the signature the defended encode_prompt binds against
    def spy(self, *a, **k):
        calls.append(k.get("prompt"))
        return orig(self, *a, **k)

    diffusers_cls.encode_prompt = spy
    try:
        noisy(PROMPT, generator=_g(), **kw)
    finally:
        diffusers_cls.encode_prompt = orig
    # the n noisy copies, the medians handed back with the prompt, then the negative, plain
    assert calls == [[PROMPT] * 3, PROMPT, "blurry"]


def test_t5_relevance_passes_skip_padding(pipes):
    dp = defend_pipeline(pipes["tiny-flux"], ["nudity"], SmoothingConfig(n=3))
    t5 = dp.defense.views[1]
    lengths = []
    hook = t5.model.register_forward_pre_hook(lambda m, args, kw: lengths.append(kw.get("input_ids", args[0] if
                                                                                          args else None).shape[1]),
                                              with_kwargs=True)
    try:
        ids, mask = t5.build_ids([[5, 6, 7]])
        full = t5.encode_ids(ids, mask)
    finally:
        hook.remove()
    assert lengths == [4] and full.shape == (1, 512, 128)
    assert torch.count_nonzero(full[0, 4:]) == 0 and torch.count_nonzero(full[0, :4]) > 0


def test_concept_bundle_roundtrip_and_refusal(pipes, tmp_path):
    dp = defend_pipeline(pipes["tiny-sdxl"], ["nudity"], SmoothingConfig(n=3))
    from amsmooth.concepts import builtin_pairs_path

    bundle = ConceptBundle.from_pairs(dp.defense.views, builtin_pairs_path("nudity"))
    bundle.save(tmp_path / "n.safetensors")
    back = ConceptBundle.load(tmp_path / "n.safetensors")
    assert set(back.concepts) == {"clip-l", "clip-g"}
    for v in dp.defense.views:
        assert torch.equal(back.for_view(v).direction, dp.defense.ams[v.slot.name].concepts[0].direction)
    flux = defend_pipeline(pipes["tiny-flux"], ["nudity"], SmoothingConfig(n=3))
    with pytest.raises(AmsmoothError, match="t5"):
        back.for_view(flux.defense.views[1])
    with pytest.raises(AmsmoothError):
        back.for_view(flux.defense.views[0])     # clip-l of Flux reads the pooled output: another fingerprint


def test_components_follow_the_shipped_configs():
    parts = tiny_family_components("sdxl")
    assert parts["unet"].config.cross_attention_dim == (parts["text_encoder"].config.hidden_size
                                                        + parts["text_encoder_2"].config.hidden_size)
    assert parts["tokenizer_2"].pad_token == "!"
