"""SAFREE baseline (Yoon et al., ICLR 2025): the maths, the lab's real-encoder decisions, and the wrapper on the tiny
SD, lab, SDXL, SD3 and Flux pipelines (shapes, determinism, the filtering schedule, composition with AMS, refusals)."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from amsmooth import AmsmoothError, SmoothingConfig
from amsmooth.baselines.safree import (
                                       KEYWORDS,
                                       SafreeConfig,
                                       filtered_steps,
                                       low_frequency_filter,
                                       project_away,
                                       projection_matrix,
                                       trigger_tokens,
)
from amsmooth.baselines.safree_pipeline import SafreePipeline
from amsmooth.eval.defenses import DefenseSpec
from amsmooth.models.tiny import tiny_family_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(out) -> np.ndarray:
    return np.stack([np.asarray(im) for im in out.images])


@pytest.fixture(scope="module")
def lab():
    from amsmooth.loading import load_pipeline

    return load_pipeline("lab", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny():
    from amsmooth.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def families():
    return {name: tiny_family_pipeline(name) for name in ("tiny-sdxl", "tiny-sd3", "tiny-flux")}


# ---------------------------------------------------------------------------------------------- the maths
def test_projection_matrix_projects_onto_the_rows_span():
    rows = torch.randn(3, 8, generator=_g())
    P = projection_matrix(rows)
    assert torch.allclose(P @ P, P, atol=1e-5) and torch.allclose(P, P.T, atol=1e-6)
    assert torch.allclose(rows @ P, rows, atol=1e-5)                       # the rows are inside
    assert round(float(torch.trace(P))) == 3


def test_trigger_is_the_token_whose_removal_leaves_the_subspace():
    toxic_dir = torch.zeros(1, 4)
    toxic_dir[0, 0] = 1.0
    P = projection_matrix(toxic_dir)
    # leave-one-out embeddings: without token 2 the prompt is far from the toxic axis, the others stay near it
    pooled = torch.tensor([[1.0, 0.1, 0, 0], [1.0, 0, 0.1, 0], [0.2, 0.3, 0.4, 0], [1.0, 0, 0, 0.1]])
    assert trigger_tokens(pooled, P, alpha=0.01).tolist() == [False, False, True, False]
    assert trigger_tokens(pooled, P, alpha=5.0).tolist() == [False] * 4     # a wide margin flags nothing
    assert trigger_tokens(pooled[:1], P, 0.01).tolist() == [False]          # one token: nothing to compare
    out = project_away(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.eye(4), P)
    assert out.tolist() == [[0.0, 1.0, 1.0, 0.0]]                           # the toxic component removed


def test_filtering_schedule_is_the_references_sigmoid():
    t, k = SafreeConfig().schedule
    assert (t, k) == (5.333, 2.5) and SafreeConfig(concepts=("vangogh",)).schedule == (5.5, 3.5)
    assert filtered_steps(0.0, 10, t, k) == 0
    assert filtered_steps(1.0, 10, t, k) == 10
    assert filtered_steps(0.5333, 10, t, k) == 5                              # the midpoint: half of up_t
    assert filtered_steps(0.6, 10, t, k) == round(10 / (1 + math.exp(-5.0 * (6.0 - 5.333))))


def test_low_frequency_filter_follows_the_reference_rule():
    x = torch.randn(3, 2, 8, 8, generator=_g())
    y = low_frequency_filter(x, slice(1, 2), slice(2, 3), scale=0.9, window=1)
    assert torch.equal(y[0], x[0]) and torch.equal(y[2], x[2])              # only the filtered rows change
    # the reference's SafeGuard_Low_Fourier_filter (batch [uncond, projected, plain]), transcribed
    f = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    low = f[..., 3:5, 3:5]
    mask = torch.where((low[2] - low[1]).real > 0.0, low[1], torch.tensor(0.9, dtype=f.dtype))
    f[1, :, 3:5, 3:5] = mask
    ref = torch.fft.ifftn(torch.fft.ifftshift(f, dim=(-2, -1)), dim=(-2, -1)).real
    assert torch.allclose(y[1], ref[1], atol=1e-5) and not torch.allclose(y[1], x[1], atol=1e-3)
    assert torch.equal(low_frequency_filter(x[:, :, :1, :1], slice(1, 2), slice(2, 3), 0.9, 1), x[:, :, :1, :1])


def test_config_keywords_and_errors(tmp_path):
    assert SafreeConfig().keywords == KEYWORDS["nudity"] and len(KEYWORDS["nudity"]) == 17
    both = SafreeConfig(concepts=("nudity", "violence"))
    assert set(both.keywords) == set(KEYWORDS["nudity"]) | set(KEYWORDS["violence"])
    f = tmp_path / "kw.txt"
    f.write_text("# mine\nlava\n\nvolcano\n")
    assert SafreeConfig(concepts=(), keywords_file=str(f)).keywords == ("lava", "volcano")
    assert SafreeConfig().to_dict()["safree_alpha"] == 0.01
    with pytest.raises(AmsmoothError, match="no keyword list"):
        SafreeConfig(concepts=("cats",))
    with pytest.raises(AmsmoothError, match="svf"):
        SafreeConfig(svf="maybe")
    with pytest.raises(AmsmoothError, match="cannot read"):
        SafreeConfig(concepts=(), keywords_file=str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------------------------------------- the lab (real encoder)
def test_lab_flags_the_concept_word_and_projects_only_flagged_positions(lab):
    safree = SafreePipeline.from_pipeline(lab, SafreeConfig())
    prompts = ["a nude person on a beach", "a person in a red shirt on a beach"]
    plain = safree.pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    nude = safree.text.analyse(prompts[0], plain[:1])
    assert "nude" in nude.flagged
    changed = (nude.projected != plain[:1]).any(-1)[0]
    start = safree.text.view.content_start
    expected = torch.zeros_like(changed)
    for i in nude.flagged_index:
        expected[start + i] = True
    assert torch.equal(changed, expected)                  # flagged tokens replaced, every other row bit-identical
    violent = SafreePipeline.from_pipeline(lab, SafreeConfig(concepts=("violence",)))
    bloody = "a bloody person holding a knife in the city"
    assert "bloody" in violent.text.analyse(bloody, violent.pipe.encode_prompt(bloody, "cpu", 1, False)[0]).flagged
    # the self-validating schedule: a benign prompt keeps the projection for step 0 only (β small)
    benign = safree.text.analyse(prompts[1], plain[1:])
    assert benign.last_step == 0 and benign.report()["filtered_steps"] == 1


def test_lab_plain_conditioning_after_the_last_filtered_step(lab):
    safree = SafreePipeline.from_pipeline(lab, SafreeConfig())
    seen = []

    def spy(_pipe, i, _t, kw):
        seen.append(kw["prompt_embeds"].clone())
        return {}

    prompt = "a person in a red shirt on a beach"
    out = safree(prompt, num_inference_steps=3, generator=_g(), callback_on_step_end=spy)
    plain = safree.pipe.encode_prompt(prompt, "cpu", 1, True, ", ".join(KEYWORDS["nudity"]))
    assert out.safree[0]["filtered_steps"] == 1
    # after step 0 (the callback sees the embeddings of the next step) the pipeline is back on the plain prompt,
    # negative prompt = the keywords
    assert torch.equal(seen[1], torch.cat([plain[1], plain[0]]))
    assert torch.equal(seen[0][:1], plain[1])                          # step 0: negative plain, prompt projected
    assert (not torch.equal(seen[0][1:], plain[0])) == bool(out.safree[0]["flagged"])
    assert out.timings["safree_s"] > 0 and out.timings["text_s"] >= out.timings["safree_s"]


def test_lab_determinism_and_composition_with_ams(lab):
    safree = SafreePipeline.from_pipeline(lab, SafreeConfig(svf="off"))
    prompt = "a nude person on a beach"
    a = _pixels(safree(prompt, num_inference_steps=3, generator=_g(1)))
    b = _pixels(safree(prompt, num_inference_steps=3, generator=_g(1)))
    assert a.tobytes() == b.tobytes()                      # same seed, same bytes
    with_ams = SafreePipeline.from_pipeline(lab, SafreeConfig(svf="off"), SmoothingConfig(concepts=("nudity",)))
    c = with_ams(prompt, num_inference_steps=3, generator=_g(1))
    d = with_ams(prompt, num_inference_steps=3, generator=_g(1))
    assert _pixels(c).tobytes() == _pixels(d).tobytes()
    assert _pixels(c).tobytes() != a.tobytes()             # AMS underneath changes the conditioning
    assert c.relevance and max(t["sigma"] for t in c.relevance[0]["tokens"]) > 0
    assert c.safree[0]["flagged"]
    zero = SafreePipeline.from_pipeline(lab, SafreeConfig(svf="off"),
                                        SmoothingConfig(concepts=("nudity",), sigma0=0.0))
    assert _pixels(zero(prompt, num_inference_steps=3, generator=_g(1))).tobytes() == a.tobytes()  # σ0 = 0: SAFREE


# -------------------------------------------------------------------------------- tiny SD, SDXL, SD3, Flux
def test_tiny_sd_shapes_batch_and_re_attention(tiny):
    safree = SafreePipeline.from_pipeline(tiny, SafreeConfig(svf="off"))
    out = safree(["a nude woman", "a cat"], num_inference_steps=2, num_images_per_prompt=2,
                 generator=[_g(s) for s in (0, 0, 1, 1)])
    assert len(out.images) == 4 and out.images[0].size == (64, 64) and len(out.safree) == 2
    lra = SafreePipeline.from_pipeline(tiny, SafreeConfig(svf="off", lra=True))
    x = lra("a nude woman", num_inference_steps=2, generator=_g())
    y = safree("a nude woman", num_inference_steps=2, generator=_g())
    assert np.asarray(x.images[0]).shape == np.asarray(y.images[0]).shape
    assert _pixels(x).tobytes() != _pixels(y).tobytes()            # the skip features were filtered
    assert not tiny.unet._forward_hooks and not tiny.unet._forward_pre_hooks   # the hooks are removed
    assert all(not b._forward_pre_hooks for b in tiny.unet.up_blocks)


def _first_step_embeds(safree: SafreePipeline, prompt: str, **kwargs) -> tuple[torch.Tensor, object]:
    seen = []

    def spy(_pipe, i, _t, kw):
        seen.append(kw["prompt_embeds"].clone())
        return {}

    out = safree(prompt, num_inference_steps=2, generator=_g(), callback_on_step_end=spy, **kwargs)
    return seen[0], out


def test_sdxl_projects_only_bigG_channels(families):
    pipe = families["tiny-sdxl"]
    safree = SafreePipeline.from_pipeline(pipe, SafreeConfig())
    emb, out = _first_step_embeds(safree, "a nude woman on a beach")
    plain = safree.pipe.encode_prompt("a nude woman on a beach", device="cpu", do_classifier_free_guidance=False)[0]
    cond = emb[1:]
    assert cond.shape == plain.shape and out.images[0].size == (64, 64)
    width = pipe.text_encoder.config.hidden_size
    assert torch.equal(cond[..., :width], plain[..., :width])          # CLIP-L untouched
    assert (not torch.equal(cond[..., width:], plain[..., width:])) == bool(out.safree[0]["flagged"])
    assert out.safree[0]["filtered_steps"] == "all"                      # the reference's SDXL: every step
    assert safree.settings()["safree_pooling"] == "penultimate-eos"     # tiny bigG: projection width ≠ hidden


def test_sd3_projects_only_t5_positions_and_determinism(families):
    safree = SafreePipeline.from_pipeline(families["tiny-sd3"], SafreeConfig(alpha=0.0))
    emb, out = _first_step_embeds(safree, "a nude woman on a beach")
    plain = safree.pipe.encode_prompt("a nude woman on a beach", None, None, device="cpu",
                                      do_classifier_free_guidance=False)[0]
    cond = emb[1:]
    assert cond.shape == plain.shape
    assert torch.equal(cond[:, :77], plain[:, :77])                     # the CLIP positions untouched
    assert out.safree[0]["flagged"] and not torch.equal(cond[:, 77:], plain[:, 77:])
    a = _pixels(safree("a nude woman", num_inference_steps=2, generator=_g(3)))
    b = _pixels(safree("a nude woman", num_inference_steps=2, generator=_g(3)))
    assert a.tobytes() == b.tobytes()


def test_sdxl_with_ams_and_re_attention(families):
    pipe = families["tiny-sdxl"]
    both = SafreePipeline.from_pipeline(pipe, SafreeConfig(lra=True), SmoothingConfig(concepts=("nudity",)))
    a = both("a nude woman", num_inference_steps=2, generator=_g())
    b = both("a nude woman", num_inference_steps=2, generator=_g())
    assert _pixels(a).tobytes() == _pixels(b).tobytes() and a.relevance and a.safree
    alone = SafreePipeline.from_pipeline(pipe, SafreeConfig(lra=True))
    assert _pixels(alone("a nude woman", num_inference_steps=2, generator=_g())).tobytes() != _pixels(a).tobytes()


def test_flux_runs_where_the_method_carries_over_and_refuses_the_rest(families):
    pipe = families["tiny-flux"]
    safree = SafreePipeline.from_pipeline(pipe, SafreeConfig())
    out = safree("a nude woman", num_inference_steps=2, generator=_g())
    assert out.images[0].size == (64, 64) and safree.settings()["safree_negative_used"] is False
    with pytest.raises(AmsmoothError, match="transformer"):
        SafreePipeline.from_pipeline(pipe, SafreeConfig(lra=True))
    with pytest.raises(AmsmoothError, match="guidance-distilled"):
        SafreePipeline.from_pipeline(pipe, SafreeConfig(negative="on"))
    with pytest.raises(AmsmoothError, match="transformer"):
        SafreePipeline.from_pipeline(families["tiny-sd3"], SafreeConfig(lra=True))


def test_refusals(tiny):
    from amsmooth.baselines.sld import SLDPipeline

    with pytest.raises(AmsmoothError, match="SAFREE wraps"):
        SafreePipeline.from_pipeline(SLDPipeline.from_pipeline(tiny, "sld-medium"), SafreeConfig())
    safree = SafreePipeline.from_pipeline(tiny, SafreeConfig())
    with pytest.raises(AmsmoothError, match="prompt_embeds"):
        safree(None, prompt_embeds=torch.zeros(1, 77, 32))


# ---------------------------------------------------------------------------------------------- eval / CLI
def test_defense_spec_names_settings_and_refusals():
    spec = DefenseSpec.parse("safree")
    assert spec.name == "safree" and spec.settings()["safree_concepts"] == ["nudity"]
    both = DefenseSpec.parse("safree", SmoothingConfig(concepts=("violence",)))
    assert both.name == "safree+ams" and both.safree.concepts == ("violence",) and "sigma0" in both.settings()
    with pytest.raises(AmsmoothError, match="unet"):
        DefenseSpec.parse("safree", SmoothingConfig(), stage="unet")
    with pytest.raises(AmsmoothError, match="--safree"):
        DefenseSpec.parse("sld-medium", safree=SafreeConfig())
    with pytest.raises(AmsmoothError, match="model-aware"):
        DefenseSpec.parse("safree", SmoothingConfig(concepts=("nudity",)), model_aware="base")


def test_eval_cli_flags_build_the_spec():
    from amsmooth.cli.runs import add_defense_args, defense_spec

    p = argparse.ArgumentParser()
    add_defense_args(p)
    spec = defense_spec(p.parse_args(["--defense", "safree", "--concept", "violence", "--safree-alpha", "0.1"]))
    assert spec.name == "safree" and spec.safree.alpha == 0.1 and spec.safree.concepts == ("violence",)
    assert defense_spec(p.parse_args(["--defense", "safree", "--ams", "--sigma0", "0.01"])).name == "safree+ams"
    with pytest.raises(AmsmoothError, match="need AMS"):
        defense_spec(p.parse_args(["--defense", "safree", "--sigma0", "0.01"]))
    with pytest.raises(AmsmoothError, match="--safree"):
        defense_spec(p.parse_args(["--defense", "ams", "--safree-lra"]))


def test_generate_cli_writes_safree_sidecars(tmp_path, capsys):
    from amsmooth.cli.main import main

    rc = main(["generate", "a nude person on a beach", "--model", "lab", "--defense", "safree", "--steps", "2",
               "--out", str(tmp_path)])
    assert rc == 0
    side = json.loads((tmp_path / "0_0.json").read_text())
    assert side["defense"] == "safree" and "nude" in side["safree"]["flagged"]
    assert side["safree"]["safree_encoder"] == "text_encoder (bert)" and (tmp_path / "0_0.png").is_file()
    assert main(["generate", "x", "--model", "tiny-flux", "--defense", "safree", "--safree-lra", "--steps", "1",
                 "--out", str(tmp_path / "f")]) == 2
    assert "transformer" in capsys.readouterr().err
