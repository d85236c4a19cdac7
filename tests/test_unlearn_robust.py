"""`amsmooth unlearn rece|race` and amsmooth.unlearn.rece / .race on tiny random models (and the lab model): the
closed forms, what the edits do to cross-attention, the PGD step, reproducibility, the CLI end to end, bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from _unet_state import changed, snapshot
from amsmooth.cli.main import main
from amsmooth.encoders import TextEncoder
from amsmooth.errors import AmsmoothError
from amsmooth.loading import load_pipeline
from amsmooth.unlearn import (
    ESDSettings,
    RACESettings,
    RACETrainer,
    RECESettings,
    UCESettings,
    adversarial_embedding,
    cross_attention_projections,
    esd,
    race,
    rece,
    trainable_parameter_names,
    uce,
)
from amsmooth.unlearn.rece import regeneration_error

FAST_ESD = ESDSettings(method="x", iterations=2, lr=1e-3, ddim_steps=3)     # tests only: few steps, a large lr
FAST = RACESettings(esd=FAST_ESD, iterations=2, pgd_steps=2)


@pytest.fixture(scope="module")
def pipe(single_thread):
    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def original(pipe):
    return snapshot(pipe.unet)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _embed(pipe, texts) -> torch.Tensor:
    with torch.no_grad():
        return TextEncoder(pipe.text_encoder, pipe.tokenizer).encode(texts)


# ------------------------------------------------------------------------------------------------ RECE

def test_adversarial_embedding_is_the_regularised_least_squares_minimiser():
    g = torch.Generator().manual_seed(0)
    edited = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    orig = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    c = torch.randn(4, 5, generator=g, dtype=torch.float64)
    rho = 0.3

    def objective(x: torch.Tensor) -> torch.Tensor:
        return sum(((x @ Wp.T) - (c @ W.T)).pow(2).sum() for Wp, W in zip(edited, orig, strict=True)) \
            + rho * x.pow(2).sum()

    adv = adversarial_embedding(c, edited, orig, rho).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(adv), adv)
    assert float(grad.abs().max()) < 1e-9                      # stationary point of a strictly convex objective
    best = float(objective(adv.detach()))
    for _ in range(5):
        assert float(objective(adv.detach() + 1e-3 * torch.randn(4, 5, generator=g, dtype=torch.float64))) > best
    same = adversarial_embedding(c, orig, orig, 1e-9)         # unedited weights: c regenerates itself
    assert torch.allclose(same, c, atol=1e-5)


def test_rece_with_zero_epochs_is_uce(pipe):
    state, history = rece(pipe, ["nudity"], settings=RECESettings(epochs=0))
    plain = uce(pipe, ["nudity"])
    assert history == [] and all(torch.equal(state[k], plain[k]) for k in plain)


def test_rece_rounds_erase_what_regenerates_the_concept(pipe, original):
    state, history = rece(pipe, ["nudity"], settings=RECESettings(epochs=3))
    projections = cross_attention_projections(pipe.unet)
    assert changed(state, original) == {f"{n}.weight" for n in projections}
    assert len(history) == 3
    for h in history:
        # the adversarial embedding regenerates the concept better than the concept's own embedding does …
        assert h.adversarial_error[0] < h.concept_error[0]
        # … and the round's edit takes that away (measured on tiny: 0.033-0.048 → 0.077-0.107)
        assert h.adversarial_error_after[0] > 1.5 * h.adversarial_error[0]
    # after RECE the adversarial embedding of a further round regenerates less than after UCE alone
    names = [f"{n}.weight" for n in projections]
    c = _embed(pipe, ["nudity"])[0]
    W = [original[n] for n in names]
    after_uce = [uce(pipe, ["nudity"])[n] for n in names]
    after_rece = [state[n] for n in names]
    err_uce = regeneration_error(adversarial_embedding(c, after_uce, W, 0.1), after_uce, W, c)
    err_rece = regeneration_error(adversarial_embedding(c, after_rece, W, 0.1), after_rece, W, c)
    assert err_rece > 1.2 * err_uce, (err_uce, err_rece)            # measured on tiny: 0.033 → 0.045


def test_rece_changes_the_concepts_cross_attention_and_keeps_the_preserved_texts(pipe, original):
    keep = ["a photo of a cat", "a red car on a street"]
    state, _ = rece(pipe, ["nudity"], preserve=keep)
    loose, _ = rece(pipe, ["nudity"])
    edited, unpreserved = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.unet)
    edited.load_state_dict(state)
    unpreserved.load_state_dict(loose)
    emb = _embed(pipe, ["nudity", *keep])                               # [3, L, D]
    g = torch.Generator().manual_seed(0)
    for name, module in pipe.unet.named_modules():
        if not name.endswith("attn2"):
            continue
        width = module.to_q.in_features
        h = torch.randn(1, 16, width, generator=g)                      # image-side queries
        with torch.no_grad():
            out = {k: [m.get_submodule(name)(h, encoder_hidden_states=e[None]) for e in emb]
                   for k, m in (("base", pipe.unet), ("rece", edited), ("loose", unpreserved))}
        concept_change = _rel(out["rece"][0], out["base"][0])
        kept = [_rel(out["rece"][i], out["base"][i]) for i in (1, 2)]
        kept_loose = [_rel(out["loose"][i], out["base"][i]) for i in (1, 2)]
        # measured on tiny: concept 0.11-0.17, preserved 0.04-0.10, the same texts unpreserved 0.44-0.69
        assert concept_change > 1.5 * max(kept), (name, concept_change, kept)
        assert max(kept) < 0.5 * min(kept_loose), (name, kept, kept_loose)


def test_rece_is_deterministic_and_validates(pipe):
    a, _ = rece(pipe, ["nudity", "naked"], guide=["a person"], settings=RECESettings(epochs=1))
    b, _ = rece(pipe, ["nudity", "naked"], guide=["a person"], settings=RECESettings(epochs=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for bad, match in [(RECESettings(epochs=-1), "epochs must be >= 0"),
                       (RECESettings(lamb=0), "lamb must be > 0"),
                       (RECESettings(regular_scale=0), "regular_scale must be > 0"),
                       (RECESettings(uce=UCESettings(technique="x")), "unknown UCE technique")]:
        with pytest.raises(AmsmoothError, match=match):
            rece(pipe, ["nudity"], settings=bad)


# ------------------------------------------------------------------------------------------------ RACE

def test_race_pgd_stays_in_the_ball_and_lowers_its_objective(pipe):
    settings = RACESettings(esd=FAST_ESD, epsilon=0.5, pgd_steps=8)
    trainer = RACETrainer(pipe, ["nudity"], settings)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = trainer.draw(g)
        x_t, t = trainer.sample(d), trainer.timestep(d.step)
        e = trainer.erase_emb[:1]
        adv, _ = trainer.attack(x_t, t, d, g)
        assert float((adv - e).abs().max()) <= 0.5 + 1e-6
        assert float(adv.min()) >= float(e.min()) and float(adv.max()) <= float(e.max())
        with torch.no_grad():
            clean = float(trainer.attack_objective(x_t, t, e, d.noise))
            attacked = float(trainer.attack_objective(x_t, t, adv, d.noise))
        assert attacked < clean, (clean, attacked)
    assert all(p.grad is None for p in trainer.model.parameters())       # the attack trains nothing


@pytest.mark.parametrize("model", ["tiny", "lab"])
def test_race_adversarial_step_raises_the_esd_loss(model, single_thread):
    """The reference's PGD lowers a denoising loss, not the ESD loss; what RACE needs is that its embedding is
    harder for the update than the clean one: before the update, the ESD loss at e + δ is higher than at e."""
    pipe = load_pipeline(model)
    start = esd(pipe, ["nudity"], ESDSettings(method="x", iterations=4, lr=1e-3, ddim_steps=4),
                torch.Generator().manual_seed(0))
    trainer = RACETrainer(pipe, ["nudity"], RACESettings(esd=ESDSettings(ddim_steps=4)), start)
    g = torch.Generator().manual_seed(1)
    clean, attacked = [], []
    for _ in range(6):
        d = trainer.draw(g)
        x_t, t = trainer.sample(d), trainer.timestep(d.step)
        adv, _ = trainer.attack(x_t, t, d, g)
        with torch.no_grad():
            clean.append(float(trainer.loss(x_t, t, d.text_index)))
            attacked.append(float(trainer.loss(x_t, t, d.text_index, emb=adv)))
    higher = sum(a > c for a, c in zip(attacked, clean, strict=True))
    assert higher >= 5 and sum(attacked) > sum(clean), (clean, attacked)


def test_race_trains_the_methods_parameters_from_the_given_start(pipe, original):
    start = esd(pipe, ["nudity"], FAST_ESD, torch.Generator().manual_seed(0))
    state, log = race(pipe, ["nudity"], FAST, torch.Generator().manual_seed(1), start=start)
    assert log.esd_losses == [] and len(log.losses) == len(log.attack_losses) == 2
    assert changed(state, start) == set(trainable_parameter_names(pipe.unet, "x"))
    assert not changed(pipe.unet.state_dict(), original)                 # the pipeline is untouched


def test_race_is_reproducible_and_runs_esd_first(pipe):
    a, log = race(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(5))
    b, _ = race(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(5))
    c, _ = race(pipe, ["nudity", "naked"], FAST, torch.Generator().manual_seed(6))
    assert len(log.esd_losses) == 2 and len(log.losses) == 2
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_race_lasso_pulls_towards_the_start(pipe):
    start = esd(pipe, ["nudity"], FAST_ESD, torch.Generator().manual_seed(0))
    trainer = RACETrainer(pipe, ["nudity"], RACESettings(esd=FAST_ESD, pgd_steps=1, lasso=0.1), start)
    assert float(trainer.lasso_penalty().detach()) == 0.0
    trainer.adversarial_step(torch.Generator().manual_seed(0))
    assert float(trainer.lasso_penalty().detach()) > 0.0


@pytest.mark.parametrize("settings,match", [
    (RACESettings(iterations=0), "iterations must be >= 1"),
    (RACESettings(epsilon=-0.1), "epsilon must be"),
    (RACESettings(pgd_steps=-1), "pgd_steps must be >= 0"),
    (RACESettings(adv_loss="l3"), "unknown adv_loss"),
    (RACESettings(lasso=float("nan")), "lasso must be"),
    (RACESettings(esd=ESDSettings(method="attn")), "unknown ESD method"),
])
def test_race_bad_settings(pipe, settings, match):
    with pytest.raises(AmsmoothError, match=match):
        race(pipe, ["nudity"], settings, torch.Generator())


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_rece_writes_a_unet_that_generate_loads(tmp_path, original):
    out = tmp_path / "rece.safetensors"
    assert main(["unlearn", "rece", "--model", "tiny", "--concept", "nudity", "--epochs", "2", "--preserve",
                 "a photo of a cat", "--device", "cpu", "--out", str(out)]) == 0
    side = json.loads((tmp_path / "rece.json").read_text())
    assert (side["method"], side["budget"], side["seed"], side["preserve"]) == ("rece", "reference", None,
                                                                                 ["a photo of a cat"])
    assert side["settings"]["epochs"] == 2 and side["settings"]["uce"]["lamb"] == 0.5 and len(side["epochs"]) == 2
    assert side["changed_tensors"] == 8
    state = load_pipeline("tiny", unet=str(out)).unet.state_dict()
    assert {k.rsplit(".", 2)[-2] for k in changed(state, original)} == {"to_k", "to_v"}
    assert main(["generate", "a photo", "--model", "tiny", "--unet", str(out), "--steps", "2", "--defense", "none",
                 "--device", "cpu", "--out", str(tmp_path / "img")]) == 0


def test_cli_race_same_seed_same_bytes_and_pretrained_esd(tmp_path, pipe):
    args = ["unlearn", "race", "--model", "tiny", "--concept", "nudity", "--budget", "quick", "--method", "x",
            "--esd-iterations", "1", "--iterations", "2", "--ddim-steps", "3", "--pgd-steps", "2", "--lr", "1e-3",
            "--seed", "4", "--device", "cpu", "--no-progress"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main([*args, "--out", str(a)]) == 0 and main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    side = json.loads((tmp_path / "a.json").read_text())
    assert (side["method"], side["budget"], side["seed"]) == ("race", "quick", 4)
    assert side["settings"]["esd"]["iterations"] == 1 and side["settings"]["alpha"] == 0.025
    assert len(side["esd_losses"]) == 1 and len(side["losses"]) == len(side["attack_losses"]) == 2
    esd_out = tmp_path / "esd.safetensors"
    assert main(["unlearn", "esd", "--model", "tiny", "--concept", "nudity", "--method", "x", "--iterations", "1",
                 "--ddim-steps", "3", "--device", "cpu", "--no-progress", "--out", str(esd_out)]) == 0
    c = tmp_path / "c.safetensors"
    assert main(["unlearn", "race", "--model", "tiny", "--concept", "nudity", "--method", "x", "--iterations", "1",
                 "--ddim-steps", "3", "--pgd-steps", "1", "--pretrained-esd", str(esd_out), "--device", "cpu",
                 "--no-progress", "--out", str(c)]) == 0
    side = json.loads((tmp_path / "c.json").read_text())
    assert side["esd_losses"] == [] and side["pretrained_esd"] == str(esd_out) and side["budget"] == "reference"
    esd_state = load_pipeline("tiny", unet=str(esd_out)).unet.state_dict()
    race_state = load_pipeline("tiny", unet=str(c)).unet.state_dict()
    assert changed(race_state, esd_state) == set(trainable_parameter_names(pipe.unet, "x"))


@pytest.mark.parametrize("extra,match", [
    (["rece", "--concept", "nudity", "--iterations", "3"], "--iterations: option(s) of `unlearn esd|race`"),
    (["race", "--concept", "nudity", "--lamb", "1"], "--lamb: option(s) of `unlearn rece|uce`"),
    (["uce", "--concept", "nudity", "--epochs", "1"], "--epochs: option(s) of `unlearn rece`"),
    (["esd", "--concept", "nudity", "--epsilon", "1"], "--epsilon: option(s) of `unlearn race`"),
    (["rece", "--concept", "nudity", "--epochs", "-1"], "epochs must be >= 0"),
    (["rece", "--concept", "nudity", "--regular-scale", "0"], "regular_scale must be > 0"),
    (["race", "--concept", "nudity", "--epsilon", "-1"], "epsilon must be a number >= 0"),
    (["race", "--concept", "nudity", "--pgd-steps", "-2"], "pgd_steps must be >= 0"),
    (["race", "--concept", "nudity", "--pretrained-esd", "none.safetensors"], "weights not found"),
    (["race", "--concept", "nudity", "--pretrained-esd", "x", "--esd-iterations", "3"], "no ESD stage runs"),
    (["rece", "--erase", "a", "--preserve-file", "none.txt"], "cannot read --preserve"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, extra, match):
    monkeypatch.chdir(tmp_path)
    assert main(["unlearn", extra[0], "--model", "tiny", "--device", "cpu", *extra[1:],
                 "--out", "x.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error: ") and match in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []
