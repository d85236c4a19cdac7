"""U-Net attacks (UnlearnDiffAtk, P4D-N, P4D-K) on the tiny pipeline at 64 px: reference schedules, K real tokens,
reproducible with a seed; adaptive at σ0 = 0 reproduces the plain prompts exactly; UnlearnDiffAtk stops on a
detector's success; P4D selects by CLIP image similarity; the CLI writes the data contract, resumes, and refuses bad
input in one line."""
from __future__ import annotations

import copy
import csv
import json
from itertools import pairwise

import pytest
import torch

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, SmoothingConfig
from amsmooth.attacks import P4D, DiffusionModels, P4DConfig, UDAConfig, UnlearnDiffAtk, Vocabulary
from amsmooth.attacks.uda import project_simplex, sequential_timesteps
from amsmooth.attacks.vocab import candidate_batch
from amsmooth.cli.main import main
from amsmooth.prompts import PromptCase

PROMPT = "a photo of a woman on the beach"
CASE = PromptCase("3", PROMPT, seed=5)
SMALL = dict(height=64, width=64, target_steps=2, eval_timesteps=2)


@pytest.fixture(scope="module")
def pipe(single_thread):
    from amsmooth.models.tiny import tiny_pipeline

    return tiny_pipeline()


def _perturbed(unet: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """An "unlearned" U-Net: the tiny one with every weight moved by scale × its std."""
    other = copy.deepcopy(unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * float(p.std()) * torch.randn(p.shape, generator=g) if p.numel() > 1 else 0 * p)
    return other


@pytest.fixture(scope="module")
def models(pipe):
    return DiffusionModels.of(pipe, _perturbed(pipe.unet))


@pytest.fixture(scope="module")
def vocab(models):
    return Vocabulary(models.encoder)


def _attack(which, models, concept, vocab, smoothing=None, **kw):
    if which == "uda":
        cfg = UDAConfig(**{"timesteps": 2, "iterations": 3, "tokens": 4, **SMALL, **kw})
        return UnlearnDiffAtk(models, concept, cfg, smoothing, vocab)
    cfg = P4DConfig(**{"iterations": 5, "tokens": 4, "select": "loss", "select_every": 1, **SMALL, **kw})
    return P4D(models, concept, cfg, smoothing, vocab)


def _ams(models, concept, sigma0):
    return AdaptiveMedianSmoothing(models.encoder, [concept], SmoothingConfig(sigma0=sigma0, k=9.0, n=3))


def test_p4d_lowers_its_loss_keeps_its_budget_and_reproduces(models, tiny_nudity, vocab):
    r1 = _attack("p4d", models, tiny_nudity, vocab).run_case(CASE, torch.Generator().manual_seed(0))
    # history: best loss so far on the attack's fixed evaluation set of (t, ε), scored every step here
    assert len(r1.history) == 5 and r1.history[-1] < r1.history[0]
    assert all(b <= a for a, b in pairwise(r1.history))
    assert len(r1.tokens) == 4 and set(r1.tokens) <= set(vocab.ids.tolist()) and r1.exact
    assert models.encoder.tokenize([r1.prompt]).content_ids[0] == r1.tokens
    assert r1.loss == pytest.approx(r1.history[-1], rel=1e-5)
    r2 = _attack("p4d", models, tiny_nudity, vocab).run_case(CASE, torch.Generator().manual_seed(0))
    assert (r2.prompt, r2.tokens, r2.history, r2.loss) == (r1.prompt, r1.tokens, r1.history, r1.loss)


def test_uda_runs_the_sequential_schedule_and_reproduces(models, tiny_nudity, vocab):
    assert sequential_timesteps(1000, 50) == list(range(10, 1000, 20))
    r1 = _attack("uda", models, tiny_nudity, vocab).run_case(CASE, torch.Generator().manual_seed(0))
    assert len(r1.history) == 2 * 3 and len(r1.tokens) == 4 and r1.info["timesteps_run"] == 2
    assert r1.prompt.endswith(PROMPT) and r1.loss > 0
    r2 = _attack("uda", models, tiny_nudity, vocab).run_case(CASE, torch.Generator().manual_seed(0))
    assert (r2.prompt, r2.history, r2.loss) == (r1.prompt, r1.history, r1.loss)
    cfg = UDAConfig()
    assert (cfg.tokens, cfg.timesteps, cfg.iterations, cfg.lr, cfg.weight_decay, cfg.mode) == (
        5, 50, 40, 0.01, 0.1, "prepend")


def test_simplex_projection():
    v = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    p = project_simplex(v)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(project_simplex(p), p, atol=1e-6)                  # a projection is idempotent


class _FlagSecond:
    """A detector that flags the second image it sees."""

    def __init__(self):
        self.seen = 0

    def detect(self, images):
        from amsmooth.eval.detectors import Detection

        self.seen += len(images)
        return [Detection({"x": 1.0}, self.seen >= 2) for _ in images]


def test_uda_stops_at_the_detectors_first_success(models, tiny_nudity, vocab):
    detector = _FlagSecond()
    cfg = UDAConfig(timesteps=4, iterations=1, tokens=3, sampling_steps=2, **SMALL)
    result = UnlearnDiffAtk(models, tiny_nudity, cfg, vocabulary=vocab, detector=detector).run_case(
        CASE, torch.Generator().manual_seed(0))
    assert detector.seen == 2 and result.info == {"timesteps_run": 2, "stopped_by_detector": True}
    assert len(result.history) == 2


def test_p4d_k_keeps_the_source_tokens_and_interleaves(models, tiny_nudity, vocab):
    attack = _attack("p4d", models, tiny_nudity, vocab, variant="k", iterations=3)
    result = attack.run_case(CASE, torch.Generator().manual_seed(0))
    source = models.encoder.tokenize([PROMPT]).content_ids[0]
    k = len(source) // 3 + 1
    assert len(result.tokens) == k
    assert P4DConfig(variant="k").mode == "interleave" and P4DConfig().mode == "replace"
    expected = attack.layout.compose(source, result.tokens)
    assert [t for i, t in enumerate(expected) if i % 4 != 0] == source


def test_p4d_selects_by_clip_image_similarity(models, tiny_nudity, vocab, tiny_clip_dir):
    from amsmooth.eval.clip import ClipImageEncoder

    clip = ClipImageEncoder.from_pretrained(str(tiny_clip_dir))
    cfg = P4DConfig(iterations=4, tokens=3, select="image", select_every=2, sampling_steps=2, **SMALL)
    result = P4D(models, tiny_nudity, cfg, vocabulary=vocab, clip=clip).run_case(CASE, torch.Generator().manual_seed(0))
    assert len(result.history) == 4 and -1 <= result.history[-1] <= 1      # −cos of CLIP image features
    assert result.history[0] == result.history[1]                          # scored at steps 0 and 2 only
    with pytest.raises(AmsmoothError, match="--clip"):
        P4D(models, tiny_nudity, P4DConfig(**SMALL), vocabulary=vocab)
    ref = P4DConfig()
    assert (ref.tokens, ref.iterations, ref.step_size, ref.weight_decay, ref.optimizer, ref.select_every,
            ref.select) == (16, 3000, 0.1, 0.1, "adamw", 50, "image")


@pytest.mark.parametrize("which, kw", [("uda", {}), ("p4d", {}), ("p4d", {"variant": "k"})])
def test_adaptive_at_zero_sigma_reproduces_the_plain_prompts(models, tiny_nudity, vocab, which, kw):
    plain = _attack(which, models, tiny_nudity, vocab, **kw).run_case(CASE, torch.Generator().manual_seed(2))
    zero = _attack(which, models, tiny_nudity, vocab, _ams(models, tiny_nudity, 0.0), **kw).run_case(
        CASE, torch.Generator().manual_seed(2))
    assert (zero.prompt, zero.tokens, zero.history, zero.loss) == (plain.prompt, plain.tokens, plain.history,
                                                                 plain.loss)


@pytest.mark.parametrize("which", ["uda", "p4d"])
def test_adaptive_objective_equals_plain_at_zero_sigma_and_differs_above(models, tiny_nudity, vocab, which):
    prefix = models.encoder.tokenize([PROMPT])
    suffixes = vocab.sample((2, 3), torch.Generator().manual_seed(0)).tolist()
    plain = _attack(which, models, tiny_nudity, vocab).case_objective(CASE)
    base = plain.losses(prefix, suffixes, plain.draw(torch.Generator().manual_seed(1), 2))
    for sigma0, same in [(0.0, True), (0.05, False)]:
        attack = _attack(which, models, tiny_nudity, vocab, _ams(models, tiny_nudity, sigma0), eot_samples=2)
        adaptive = attack.case_objective(CASE)
        draw = adaptive.draw(torch.Generator().manual_seed(1), 2)
        assert draw.z.shape[:2] == (2, 3)
        got = adaptive.losses(prefix, suffixes, draw)
        if same:
            torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-8)
        else:
            assert (got - base).abs().min() > 1e-7


def test_adaptive_gradient_goes_through_the_smoothing(models, tiny_nudity, vocab):
    prefix = models.encoder.tokenize([PROMPT])
    suffix = vocab.sample((3,), torch.Generator().manual_seed(0)).tolist()
    plain = _attack("uda", models, tiny_nudity, vocab).case_objective(CASE)
    _, g_plain = plain.loss_and_grad(prefix, suffix, plain.draw(torch.Generator().manual_seed(2)))
    adaptive = _attack("uda", models, tiny_nudity, vocab, _ams(models, tiny_nudity, 0.05)).case_objective(CASE)
    _, g_adapt = adaptive.loss_and_grad(prefix, suffix, adaptive.draw(torch.Generator().manual_seed(2)))
    assert g_plain.shape == g_adapt.shape == (3, models.encoder.hidden_size)
    assert g_adapt.abs().sum() > 0 and not torch.allclose(g_plain, g_adapt)


def test_p4d_with_the_original_unet_has_zero_loss_at_the_source_prompt(pipe, models, tiny_nudity, vocab):
    same = DiffusionModels.of(pipe)                    # attacked U-Net = original U-Net
    assert same.unet is same.original
    objective = _attack("p4d", same, tiny_nudity, vocab).case_objective(CASE)
    draw = objective.draw(torch.Generator().manual_seed(0), 3)
    assert objective.text_loss(PROMPT, draw) < 1e-10
    assert objective.text_loss("a red car", draw) > 1e-6
    unlearned = _attack("p4d", models, tiny_nudity, vocab).case_objective(CASE)
    assert unlearned.text_loss(PROMPT, unlearned.draw(torch.Generator().manual_seed(0), 3)) > 1e-6


def test_prepended_candidates_match_tokenizing_the_text(models, vocab):
    enc = models.encoder
    adv = vocab.ids[[5, 99, 1234]].tolist()
    built = candidate_batch(enc, enc.tokenize([PROMPT]), [adv], prepend=True)
    ref = enc.tokenize([f"{enc.tokenizer.decode(adv)} {PROMPT}"])
    assert torch.equal(built.input_ids, ref.input_ids) and torch.equal(built.word_index, ref.word_index)
    assert torch.equal(built.content_mask, ref.content_mask)


def test_needs_the_original_unet_when_it_was_not_kept(pipe, models, tiny_nudity, vocab, tmp_path):
    gone = DiffusionModels(pipe, models.unet, None, models.encoder)
    with pytest.raises(AmsmoothError, match="needs the original U-Net"):
        _attack("p4d", gone, tiny_nudity, vocab)
    with pytest.raises(AmsmoothError, match="needs the original U-Net"):
        _attack("uda", gone, tiny_nudity, vocab)
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / f"{CASE.case_number}.png")
    uda = UnlearnDiffAtk(gone, tiny_nudity, UDAConfig(**SMALL), vocabulary=vocab, target_images=tmp_path)
    assert uda.targets(CASE).shape == (1, 4, 32, 32)        # given targets need no original U-Net


# ------------------------------------------------------------------------------------------------ CLI

FAST = ["--budget", "quick", "--iterations", "2", "--tokens", "3", "--height", "64", "--width", "64",
        "--target-steps", "2", "--eval-timesteps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def unlearned_file(pipe, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("unet") / "unlearned.safetensors"
    save_file({k: v.contiguous() for k, v in _perturbed(pipe.unet).state_dict().items()}, str(path))
    return str(path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n"
                    "7,a cat on a sofa,11,7.5\n8,a red car in the rain,12,\n", encoding="utf-8")
    return path


def _rows(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cli_uda_writes_the_contract_and_resumes(tmp_path, prompts, unlearned_file, capsys, single_thread):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    args = ["attack", "uda", "--model", "tiny", "--unet", unlearned_file, "--concept", "nudity",
            "--prompts", str(prompts), *FAST]
    assert main([*args, "--out", str(full)]) == 0
    assert main([*args, "--out", str(part), "--limit", "1"]) == 0
    assert main([*args, "--out", str(part)]) == 0
    assert "1 uda prompt(s) attacked now, 1 already there" in capsys.readouterr().out
    rows = _rows(full)
    assert _rows(part) == rows and [r["case_number"] for r in rows] == ["7", "8"]
    assert rows[0]["evaluation_seed"] == "11" and rows[0]["prompt"].endswith(" a cat on a sofa")
    assert all(r["attack"] == "uda" and r["exact"] in ("True", "False") and float(r["loss"]) > 0 for r in rows)
    settings = json.loads(rows[0]["settings"])
    assert settings["models"]["unet"] == unlearned_file and settings["config"]["height"] == 64
    assert settings["models"]["unet_fingerprint"] != settings["models"]["original_fingerprint"]


def test_cli_p4d_adaptive_with_target_images_and_no_unet(tmp_path, prompts, capsys, single_thread):
    from PIL import Image

    folder = tmp_path / "targets"
    folder.mkdir()
    for case in ("7", "8"):
        Image.new("RGB", (80, 48), (200, 120, 40)).save(folder / f"{case}.png")
    out = tmp_path / "adv.csv"
    assert main(["attack", "p4d", "--model", "tiny", "--concept", "nudity", "--prompts", str(prompts),
                 "--target-images", str(folder), "--adaptive", "--sigma0", "0.02", "--n", "3", "--limit", "1",
                 "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "warning: no --unet" in err and err.count("\n") == 1
    row = _rows(out)[0]
    settings = json.loads(row["settings"])
    assert row["adaptive"] == "True" and row["prompt"] and settings["config"]["tokens"] == 3
    assert settings["config"]["budget"] == "quick" and settings["config"]["select"] == "loss"
    k_out = tmp_path / "adv-k.csv"                                   # P4D-K keeps the source words
    assert main(["attack", "p4d", "--variant", "k", "--model", "tiny", "--prompts", str(prompts), "--limit", "1",
                 "--target-images", str(folder), "--out", str(k_out), *FAST]) == 0
    k_row = _rows(k_out)[0]
    assert json.loads(k_row["settings"])["config"]["mode"] == "interleave"
    assert all(w in k_row["prompt"] for w in ("cat", "sofa"))
    assert settings["smoothing"]["sigma0"] == 0.02 and settings["target_images"] == str(folder)


@pytest.mark.parametrize("argv, message", [
    (["attack", "uda", "--model", "tiny", "--tokens", "0"], "tokens"),
    (["attack", "p4d", "--model", "tiny", "--tokens", "-1"], "tokens"),
    (["attack", "uda", "--model", "tiny", "--loss", "mse"], "applies to 'rab', 'concept-pgd' only"),
    (["attack", "p4d", "--model", "tiny"], "give --clip SRC"),
    (["attack", "rab", "--encoder", "tiny", "--height", "64"], "applies to 'uda', 'p4d' only"),
    (["attack", "uda", "--model", "tiny", "--height", "60"], "multiple of 8"),
    (["attack", "uda", "--model", "tiny", "--timesteps", "0"], "timesteps"),
    (["attack", "uda", "--model", "tiny", "--target-images", "/nonexistent/dir"], "no such folder"),
    (["attack", "uda", "--model", "tiny", "--eot-samples", "2"], "add --adaptive"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, prompts, capsys, argv, message):
    assert main([*argv, "--prompts", str(prompts), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and message in err and "\n" not in err


def test_cli_missing_target_image_and_unfit_unet(tmp_path, prompts, capsys, single_thread):
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path / "targets"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "7.png")
    assert main(["attack", "uda", "--model", "tiny", "--target-images", str(folder), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no target image for 1 case(s), such as 8.png" in err and "\n" not in err
    bad = tmp_path / "bad.safetensors"
    save_file({"conv_in.weight": torch.zeros(3, 3)}, str(bad))
    assert main(["attack", "uda", "--model", "tiny", "--unet", str(bad), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit the pipeline's U-Net" in err and "\n" not in err and not (tmp_path / "o.csv").exists()
