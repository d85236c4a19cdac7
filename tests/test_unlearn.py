"""`amsmooth unlearn esd|uce` and amsmooth.unlearn on tiny random models: which weights change, what they learn,
reproducibility, the CLI end to end, bad input."""
from __future__ import annotations

import copy
import json
import types

import pytest
import torch

from _unet_state import changed, snapshot
from amsmooth.cli.main import main
from amsmooth.encoders import TextEncoder
from amsmooth.errors import AmsmoothError
from amsmooth.loading import load_pipeline
from amsmooth.unlearn import (
    ESDSettings,
    ESDTrainer,
    UCESettings,
    cross_attention_projections,
    esd,
    trainable_parameter_names,
    uce,
)
from amsmooth.unlearn.uce import edit_tokens, targets

FAST = ESDSettings(iterations=2, lr=1e-3, ddim_steps=3)   # tests only: few iterations, a large step


@pytest.fixture(scope="module")
def pipe(single_thread):
    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def original(pipe):
    return snapshot(pipe.unet)


# ------------------------------------------------------------------------------------------------ ESD

@pytest.mark.parametrize("method", ["x", "u", "x-strict"])
def test_esd_changes_exactly_the_train_methods_parameters(pipe, original, method):
    state = esd(pipe, ["nudity"], ESDSettings(method=method, iterations=2, lr=1e-3, ddim_steps=3),
                torch.Generator().manual_seed(0))
    selected = set(trainable_parameter_names(pipe.unet, method))
    diff = changed(state, original)
    assert diff == selected                                     # every trained parameter moved, nothing else
    if method == "u":
        assert not any("attn2" in k for k in diff) and len(diff) > 100
        assert not any("norm" in k.split(".")[-2] for k in diff)      # Linear/Conv2d only, as the reference
    else:
        assert diff and all("attn2" in k for k in diff)
    if method == "x-strict":
        assert {k.rsplit(".", 2)[-2] for k in diff} == {"to_k", "to_v"}
    assert not changed(pipe.unet.state_dict(), original)       # the pipeline's own U-Net is untouched


def test_esd_lowers_its_loss_on_the_erase_prompt(pipe):
    settings = ESDSettings(method="x", iterations=8, lr=1e-3, ddim_steps=4)
    state = esd(pipe, ["nudity"], settings, torch.Generator().manual_seed(0))
    trained = copy.deepcopy(pipe.unet)
    trained.load_state_dict(state)
    probe = ESDTrainer(pipe, ["nudity"], settings)
    g = torch.Generator().manual_seed(123)                      # held-out draws, x_t from the original U-Net
    draws = [probe.draw(g) for _ in range(4)]

    def mean_loss(unet) -> float:
        with torch.no_grad():
            return sum(float(probe.loss(probe.sample(d, unet=pipe.unet), probe.timestep(d.step), d.text_index,
                                        unet=unet)) for d in draws) / len(draws)

    before, after = mean_loss(pipe.unet), mean_loss(trained)
    assert after < 0.5 * before, (before, after)


def test_esd_is_reproducible(pipe):
    a = esd(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(5))
    b = esd(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(5))
    c = esd(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_esd_follows_the_reference_schedule(pipe):
    trainer = ESDTrainer(pipe, ["nudity"], ESDSettings(ddim_steps=50))
    g = torch.Generator().manual_seed(0)
    steps = {trainer.draw(g).step for _ in range(400)}
    assert steps == set(range(1, 49))                           # esd_diffusers.py: randint(1, nsteps - 1)
    assert int(trainer.sampler.timesteps[10]) == 781            # x_t after 10 of 50 DDIM steps sits at t = 781 …
    assert int(trainer.timestep(10)) == 800                     # … and is queried at the 1000-grid's [200]


@pytest.mark.parametrize("settings,match", [
    (ESDSettings(method="attn"), "unknown ESD method"),
    (ESDSettings(ddim_steps=2), "ddim_steps must be >= 3"),
    (ESDSettings(lr=0.0), "lr must be a positive"),
    (ESDSettings(iterations=0), "iterations must be >= 1"),
])
def test_esd_bad_settings(pipe, settings, match):
    with pytest.raises(AmsmoothError, match=match):
        esd(pipe, ["nudity"], settings, torch.Generator())


def test_esd_refuses_blank_erase_texts(pipe):
    with pytest.raises(AmsmoothError, match="no erase text"):
        esd(pipe, [], FAST, torch.Generator())
    with pytest.raises(AmsmoothError, match="must not be empty"):
        esd(pipe, ["nudity", "  "], FAST, torch.Generator())


# ------------------------------------------------------------------------------------------------ UCE

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_uce_maps_erase_tokens_to_the_guide_and_keeps_preserved_ones(pipe, original):
    keep = ["a photo of a cat", "a red car on a street"]
    state = uce(pipe, ["nudity"], preserve=keep)
    loose = uce(pipe, ["nudity"])                               # the same edit without those texts preserved
    projections = cross_attention_projections(pipe.unet)
    assert changed(state, original) == {f"{n}.weight" for n in projections} and len(projections) == 8
    tok = edit_tokens(TextEncoder(pipe.text_encoder, pipe.tokenizer), ["nudity"], [" "], keep)
    kept_rows = tok.preserve[77:]                               # the rows of `keep` (the first 77: empty prompt)
    for name, proj in projections.items():
        W, new = proj.weight.detach(), state[f"{name}.weight"]
        target = tok.guide @ W.T                                # keys/values of the empty prompt's tokens
        before, after = _rel(tok.erase @ W.T, target), _rel(tok.erase @ new.T, target)
        assert after < 0.35 * before, (name, before, after)     # measured: 0.26-0.35 → 0.086-0.10
        drift = _rel(kept_rows @ new.T, kept_rows @ W.T)
        drift_loose = _rel(kept_rows @ loose[f"{name}.weight"].T, kept_rows @ W.T)
        assert drift < 0.1 and drift < drift_loose, (name, drift, drift_loose)


def test_uce_is_the_identity_when_erase_equals_guide(pipe, original):
    state = uce(pipe, ["a dog", "a cat"], guide=["a dog", "a cat"], preserve=["a tree"])
    assert max(float((state[k] - original[k]).abs().max()) for k in original) < 1e-5


def test_uce_value_only_and_tensor_technique(pipe, original):
    state = uce(pipe, ["nudity"], settings=UCESettings(with_to_k=False))
    assert {k.rsplit(".", 2)[-2] for k in changed(state, original)} == {"to_v"}
    tok = edit_tokens(TextEncoder(pipe.text_encoder, pipe.tokenizer), ["nudity", "naked"], ["a", "b"], [])
    W = next(iter(cross_attention_projections(pipe.unet).values())).weight.detach()
    v = targets(W, tok, "tensor")
    for vs, es in zip(v.split(tok.sizes), (tok.erase @ W.T).split(tok.sizes), strict=True):
        assert abs(float((vs * es).sum())) < 1e-4 * float(vs.norm() * es.norm())   # v* ⟂ W c, per erase text
    assert not torch.allclose(v, targets(W, tok, "replace"))


def test_uce_guide_count_must_match(pipe):
    with pytest.raises(AmsmoothError, match="2 guide texts for 3 erase texts"):
        uce(pipe, ["a", "b", "c"], guide=["x", "y"])
    with pytest.raises(AmsmoothError, match="lamb must be > 0"):
        uce(pipe, ["a"], settings=UCESettings(lamb=0.0))


# ------------------------------------------------------------------------------------------------ other encoders

def test_esd_and_uce_with_a_minilm_text_encoder_and_a_pixel_space_unet(minilm, single_thread):
    """No CLIP, no 4-channel latent: a BERT (MiniLM) text encoder and a 3-channel 16-px U-Net."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=384,
                                attention_head_dim=4, norm_num_groups=8).eval()
    lab = types.SimpleNamespace(unet=unet, text_encoder=minilm.model, tokenizer=minilm.tokenizer,
                                scheduler=DDPMScheduler(num_train_timesteps=1000))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    state = esd(lab, ["nudity"], ESDSettings(method="x", iterations=2, lr=1e-3, ddim_steps=3),
                torch.Generator().manual_seed(0))
    assert changed(state, before) == set(trainable_parameter_names(unet, "x"))
    state = uce(lab, ["nudity"], preserve=["a photo of a cat"])
    tok = edit_tokens(TextEncoder(minilm.model, minilm.tokenizer), ["nudity"], [" "], [])
    for name, proj in cross_attention_projections(unet).items():
        W = proj.weight.detach()
        target = tok.guide @ W.T
        assert _rel(tok.erase @ state[f"{name}.weight"].T, target) < 0.5 * _rel(tok.erase @ W.T, target)


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_esd_writes_a_unet_that_generate_loads_and_same_seed_same_bytes(tmp_path, original, capsys):
    args = ["unlearn", "esd", "--model", "tiny", "--concept", "nudity", "--method", "x", "--iterations", "2",
            "--ddim-steps", "3", "--lr", "1e-3", "--seed", "3", "--device", "cpu", "--no-progress"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main([*args, "--out", str(a)]) == 0 and main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    side = json.loads((tmp_path / "a.json").read_text())
    assert (side["method"], side["erase"], side["seed"], side["settings"]["method"]) == ("esd", ["nudity"], 3, "x")
    assert len(side["losses"]) == 2 and side["timings"]["unlearn_s"] > 0
    assert side["changed_tensors"] == len(trainable_parameter_names(load_pipeline("tiny").unet, "x"))
    assert "wrote" in capsys.readouterr().out
    loaded = load_pipeline("tiny", unet=str(a)).unet.state_dict()
    assert changed(loaded, original) and all(k in original for k in loaded)
    assert main(["generate", "a photo", "--model", "tiny", "--unet", str(a), "--steps", "2", "--defense", "none",
                 "--device", "cpu", "--out", str(tmp_path / "img")]) == 0
    assert json.loads((tmp_path / "img" / "0_0.json").read_text())["unet"] == str(a)


def test_cli_uce_with_preserve_file_and_overwrite(tmp_path, original):
    keep = tmp_path / "keep.txt"
    keep.write_text("a photo of a cat\n\na red car\n")
    out = tmp_path / "u.safetensors"
    args = ["unlearn", "uce", "--model", "tiny", "--erase", "nudity", "--erase", "naked", "--guide", "a person",
            "--preserve-file", str(keep), "--device", "cpu", "--out", str(out)]
    assert main([*args, "--lamb", "0.1"]) == 0
    side = json.loads((tmp_path / "u.json").read_text())
    assert side["preserve"] == ["a photo of a cat", "a red car"] and side["guide"] == ["a person"]
    assert side["settings"]["lamb"] == 0.1 and side["changed_tensors"] == 8 and side["concept"] is None
    first = out.read_bytes()
    assert main([*args, "--lamb", "1.0"]) == 2 and out.read_bytes() == first   # refused, file unchanged
    assert main([*args, "--lamb", "1.0", "--overwrite"]) == 0
    assert out.read_bytes() != first
    state = load_pipeline("tiny", unet=str(out)).unet.state_dict()
    assert {k.rsplit(".", 2)[-2] for k in changed(state, original)} == {"to_k", "to_v"}


@pytest.mark.parametrize("extra,match", [
    (["esd", "--concept", "nudity", "--out", "x.pt"], "give a file name ending in .safetensors"),
    (["esd", "--concept", "nudity", "--out", "missing/x.safetensors"], "missing does not exist"),
    (["esd", "--out", "x.safetensors"], "nothing to erase: give --concept"),
    (["esd", "--concept", "cats", "--out", "x.safetensors"], "no default erase texts for concept 'cats'"),
    (["esd", "--concept", "nudity", "--lamb", "1", "--out", "x.safetensors"], "--lamb: option"),
    (["uce", "--concept", "nudity", "--iterations", "3", "--out", "x.safetensors"], "--iterations: option"),
    (["esd", "--concept", "nudity", "--ddim-steps", "2", "--out", "x.safetensors"], "ddim_steps must be >= 3"),
    (["uce", "--erase", "a", "--erase", "b", "--guide", "x", "--guide", "y", "--guide", "z", "--out",
      "x.safetensors"], "3 --guide texts for 2 erase texts"),
    (["uce", "--erase", " ", "--out", "x.safetensors"], "must not be empty or blank"),
    (["uce", "--erase", "a", "--preserve-file", "none.txt", "--out", "x.safetensors"], "cannot read --preserve"),
    (["uce", "--erase", "a", "--unet", "none.safetensors", "--out", "x.safetensors"], "weights not found"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, extra, match):
    monkeypatch.chdir(tmp_path)
    assert main(["unlearn", extra[0], "--model", "tiny", "--device", "cpu", *extra[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error: ") and match in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_unet_file_and_sidecar_get_the_same_umask_mode(tmp_path):
    import os

    from amsmooth.unlearn import save_unet

    old = os.umask(0o022)
    try:
        out = tmp_path / "u.safetensors"
        save_unet({"w": torch.zeros(2)}, out, {"method": "test"})
    finally:
        os.umask(old)
    # safetensors creates 0600 files: the U-Net was unreadable to the group while its sidecar was not
    assert out.stat().st_mode & 0o777 == (tmp_path / "u.json").stat().st_mode & 0o777 == 0o644
