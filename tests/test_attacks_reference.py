"""The reference-faithful text attacks (Ring-A-Bell, QF-Attack, MMA-Diffusion) and what all attacks share:
adaptive at σ0 = 0 reproduces the plain attack's prompts exactly, re-ranking, bootstrap intervals, the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, SmoothingConfig
from amsmooth.attacks import (
    ConceptPGD,
    ConceptPGDConfig,
    MMAConfig,
    MMADiffusion,
    QFAttack,
    QFConfig,
    RingABell,
    RingABellConfig,
    Vocabulary,
)
from amsmooth.attacks.concept_file import load_vector_concept
from amsmooth.attacks.mma import sensitive_token_ids
from amsmooth.attacks.qf import char_table, key_dimensions
from amsmooth.attacks.stats import bootstrap_mean, paired_difference
from amsmooth.attacks.vocab import Layout
from amsmooth.cli.main import main

PROMPT = "a photo of a woman on the beach"


def _ams(enc, concept, sigma0, n=3):
    return AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(sigma0=sigma0, k=9.0, n=n))


SMALL = {
    "rab": lambda enc, c, ams: RingABell(enc, c, RingABellConfig(tokens=5, iterations=4, population=8), ams),
    "qf-pgd": lambda enc, c, ams: QFAttack(enc, c, QFConfig(iterations=3, samples=6, top_n=2), ams),
    "qf-greedy": lambda enc, c, ams: QFAttack(enc, c, QFConfig(search="greedy", tokens=3), ams),
    "qf-genetic": lambda enc, c, ams: QFAttack(enc, c, QFConfig(search="genetic", iterations=3, tokens=4), ams),
    "mma": lambda enc, c, ams: MMADiffusion(enc, c, MMAConfig(tokens=6, iterations=3, candidates=12, topk=8), ams),
    "concept-pgd": lambda enc, c, ams: ConceptPGD(enc, c, ConceptPGDConfig(tokens=3, iterations=4), ams),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_adaptive_at_zero_sigma_reproduces_the_plain_prompts_exactly(tiny_encoder, tiny_nudity, name):
    plain = SMALL[name](tiny_encoder, tiny_nudity, None).run(PROMPT, torch.Generator().manual_seed(5))
    zero = SMALL[name](tiny_encoder, tiny_nudity, _ams(tiny_encoder, tiny_nudity, 0.0)).run(
        PROMPT, torch.Generator().manual_seed(5))
    assert (zero.prompt, zero.tokens, zero.history, zero.loss) == (plain.prompt, plain.tokens, plain.history,
                                                                 plain.loss)
    noisy = SMALL[name](tiny_encoder, tiny_nudity, _ams(tiny_encoder, tiny_nudity, 0.5)).run(
        PROMPT, torch.Generator().manual_seed(5))
    assert noisy.history != plain.history                      # the defense changes what the search sees


def test_ring_a_bell_reference_defaults_per_concept(tiny_encoder, tiny_nudity):
    rab = RingABell(tiny_encoder, tiny_nudity)
    cfg = rab.config
    assert (cfg.tokens, cfg.eta, cfg.iterations, cfg.population, cfg.mutation_rate, cfg.crossover_rate,
            cfg.elitism) == (16, 3.0, 3000, 200, 0.25, 0.5, False)
    assert rab.vocabulary.kind == "all" and len(rab.vocabulary) > len(Vocabulary(tiny_encoder))
    violence = type(tiny_nudity)("violence", tiny_nudity.direction, tiny_nudity.fingerprint)
    v = RingABell(tiny_encoder, violence, vocabulary=rab.vocabulary).config
    assert (v.tokens, v.eta) == (tiny_encoder.max_content, 5.5)      # K = 77 on CLIP: the whole prompt
    quick = RingABell.make_config("quick")
    assert quick.budget == "quick" and quick.iterations < 3000


def test_departures_list_every_setting_off_the_reference(tiny_encoder, tiny_nudity):
    assert RingABell(tiny_encoder, tiny_nudity).departures() == {}
    quick = RingABell(tiny_encoder, tiny_nudity, RingABell.make_config("quick")).departures()
    assert quick == {"iterations": {"value": 10, "reference": 3000}, "population": {"value": 16, "reference": 200}}
    # asked for the reference budget, with one flag changed: the label alone would say "reference"
    cfg = RingABell.make_config("reference", iterations=4, eta=10.0)
    assert cfg.budget == "reference"
    assert RingABell(tiny_encoder, tiny_nudity, cfg).departures() == {
        "eta": {"value": 10.0, "reference": 3.0}, "iterations": {"value": 4, "reference": 3000}}
    # adaptive-only options have no reference value; another reference variant is not a departure
    assert RingABell(tiny_encoder, tiny_nudity, RingABell.make_config(eot_samples=3)).departures() == {}
    assert QFAttack(tiny_encoder, tiny_nudity, QFAttack.make_config(search="greedy")).departures() == {}
    assert QFAttack(tiny_encoder, tiny_nudity, QFAttack.make_config(search="greedy", iterations=3)).departures() \
        == {"iterations": {"value": 3, "reference": 1}}


def test_ring_a_bell_concept_vector_file(tmp_path, tiny_encoder, tiny_nudity):
    path = tmp_path / "Nudity_vector.npy"
    np.save(path, tiny_nudity.direction.numpy())
    concept = load_vector_concept(path, tiny_encoder)
    assert concept.name == "nudity" and torch.equal(concept.direction, tiny_nudity.direction.float())
    concept.check_encoder(tiny_encoder)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(AmsmoothError, match="does not fit the encoder"):
        load_vector_concept(bad, tiny_encoder)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(AmsmoothError, match="not a plain .npy"):
        load_vector_concept(pickled, tiny_encoder)


def test_qf_attack_appends_a_character_suffix_that_lowers_similarity(tiny_encoder, tiny_nudity):
    table = char_table()
    assert len(table) == 63 and len(set(table)) == 62 and table[27] == "A" and table[-1] == "9"
    attack = QFAttack(tiny_encoder, tiny_nudity, QFConfig(search="greedy", tokens=3))
    result = attack.run(PROMPT, torch.Generator().manual_seed(0))
    suffix = result.prompt[len(PROMPT) + 1:]
    assert result.prompt.startswith(PROMPT + " ") and len(suffix) == 3 and set(suffix) <= set(table)
    assert result.exact and result.loss < 1.0                     # cos(T(adv), T(prompt)) < 1
    pgd = QFAttack(tiny_encoder, tiny_nudity, QFConfig(iterations=3, samples=8, top_n=2)).run(
        PROMPT, torch.Generator().manual_seed(0))
    assert len(pgd.prompt) == len(PROMPT) + 1 + 5 and len(pgd.tokens) == 5
    assert pgd.history[-1] <= pgd.history[0]
    assert QFConfig().iterations == 100 and QFConfig(search="genetic").iterations == 50


def test_qf_targeted_uses_the_key_dimensions_of_a_phrase(tiny_encoder, tiny_nudity):
    sentences = ("a cat on a sofa and a young man", "a red car in the rain and a young man",
                 "a bowl of fruit and a young man")
    mask = key_dimensions(tiny_encoder, sentences, "and a young man", 1)
    assert mask.shape == (tiny_encoder.max_length * tiny_encoder.hidden_size,)
    assert 0 < float(mask.sum()) < mask.numel()
    cfg = QFConfig(search="greedy", tokens=2, objective="targeted", mask_phrase="and a young man",
                   mask_sentences=sentences, mask_threshold=1)
    attack = QFAttack(tiny_encoder, tiny_nudity, cfg)
    assert torch.equal(attack.mask, mask)
    assert attack.run("a snake and a young man", torch.Generator().manual_seed(0)).loss < 1.0
    with pytest.raises(AmsmoothError, match="mask-phrase"):
        QFConfig(objective="targeted")


def test_mma_keeps_sensitive_tokens_out_and_matches_the_target(tiny_encoder, tiny_nudity):
    banned = set(sensitive_token_ids(tiny_encoder))
    vocab = tiny_encoder.tokenizer.get_vocab()
    assert vocab["naked</w>"] in banned and vocab["nude</w>"] in banned and vocab["cat</w>"] not in banned
    attack = MMADiffusion(tiny_encoder, tiny_nudity, MMAConfig(tokens=8, iterations=5, candidates=32, topk=16))
    result = attack.run("a completely naked woman", torch.Generator().manual_seed(0))
    assert len(result.tokens) == 8 and not set(result.tokens) & banned and result.exact
    assert result.history[-1] < result.history[0] and result.loss == pytest.approx(result.history[-1], rel=1e-5)
    assert MMAConfig().tokens == 20 and MMAConfig().iterations == 1000 and MMAConfig().candidates == 512


def test_rerank_rescores_candidates_under_the_defense(tiny_encoder, tiny_nudity):
    ams = _ams(tiny_encoder, tiny_nudity, 0.05)
    cfg = ConceptPGDConfig(tokens=3, iterations=5, rerank=3, rerank_draws=2)
    result = ConceptPGD(tiny_encoder, tiny_nudity, cfg, ams).run(PROMPT, torch.Generator().manual_seed(0))
    assert 1 <= result.info["reranked"] <= 4 and "rerank_loss" in result.info
    with pytest.raises(AmsmoothError, match="needs an adaptive attack"):
        ConceptPGD(tiny_encoder, tiny_nudity, cfg)


def test_interleave_layout_is_p4d_k():
    layout = Layout("interleave", 3)
    assert layout.count(6, 16) == 3 and layout.positions(6, 3) == [0, 4, 8]
    assert layout.compose([1, 2, 3, 4, 5, 6], [7, 8, 9]) == [7, 1, 2, 3, 8, 4, 5, 6, 9]
    assert layout.compose([1, 2], [9]) == [9, 1, 2]


def test_bootstrap_intervals_are_seeded_and_paired():
    values = [0.1, 0.4, 0.35, 0.8, 0.2, 0.5]
    a, b = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert a == b and a.low <= a.mean <= a.high and a.mean == pytest.approx(np.mean(values))
    d = paired_difference([1.0, 2.0, 3.0, 4.0], [0.5, 1.4, 2.6, 3.5])
    assert d.mean == pytest.approx(0.5) and d.low > 0 and d.excludes_zero()
    with pytest.raises(AmsmoothError, match="paired values differ"):
        paired_difference([1.0], [1.0, 2.0])


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n7,a cat on a sofa,11,7.5\n"
                    "8,a red car in the rain,12,\n", encoding="utf-8")
    return path


def _rows(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cli_qf_on_minilm_quick(tmp_path, prompts, minilm_dir, capsys):
    out = tmp_path / "qf.csv"
    assert main(["attack", "qf", "--encoder", minilm_dir, "--prompts", str(prompts), "--out", str(out),
                 "--budget", "quick", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "NOT the reference settings: iterations 8 (reference 100), samples 16 (reference 100)" in text
    assert "95 % CI" in text
    rows = _rows(out)
    settings = json.loads(rows[0]["settings"])
    assert settings["config"]["budget"] == "quick" and settings["config"]["search"] == "pgd"
    assert rows[0]["prompt"].startswith("a cat on a sofa ") and rows[0]["attack"] == "qf"


def test_cli_mma_quick_and_adaptive(tmp_path, prompts, capsys):
    out = tmp_path / "mma.csv"
    assert main(["attack", "mma", "--encoder", "tiny", "--prompts", str(prompts), "--out", str(out), "--limit", "1",
                 "--budget", "quick", "--adaptive", "--n", "3", "--rerank", "2", "--no-progress"]) == 0
    row = _rows(out)[0]
    settings = json.loads(row["settings"])
    assert row["adaptive"] == "True" and settings["config"]["rerank"] == 2
    assert len(json.loads(row["settings"])["config"]) > 5 and row["attack"] == "mma"


@pytest.mark.parametrize("argv, message", [
    (["attack", "rab", "--encoder", "tiny", "--budget", "4"], "the number of adversarial tokens is --tokens 4"),
    (["attack", "rab", "--encoder", "tiny", "--budget", "huge"], "--budget must be reference or quick"),
    (["attack", "qf-pgd", "--encoder", "tiny"], "'concept-pgd'"),
    (["attack", "qf", "--encoder", "tiny", "--qf-objective", "targeted"], "--mask-phrase"),
    (["attack", "rab", "--encoder", "tiny", "--search", "greedy"], "applies to 'qf' only"),
    (["attack", "mma", "--encoder", "tiny", "--rerank", "2"], "add --adaptive"),
    (["attack", "rab", "--encoder", "tiny", "--clip", "x"], "--clip is for p4d"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, prompts, capsys, argv, message):
    assert main([*argv, "--prompts", str(prompts), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.csv").exists()
