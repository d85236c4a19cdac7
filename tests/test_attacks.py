"""Text-encoder attacks on the tiny CLIP: they lower their loss, keep to K real tokens, reproduce with a seed; the
adaptive objective goes through the smoothing (differs at σ0 > 0); adaptive attacks at σ0 = 0 reproduce the plain
attacks' prompts exactly (the smoothing noise has its own stream)."""
from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, SmoothingConfig
from amsmooth.attacks import (
    ConceptPGD,
    ConceptPGDConfig,
    RingABell,
    RingABellConfig,
    TextObjective,
    Vocabulary,
    attack_class,
    concept_target,
    straight_through_median,
)
from amsmooth.attacks.ring_a_bell import crossover, mutate
from amsmooth.attacks.vocab import candidate_batch

PROMPT = "a photo of a woman on the beach"


@pytest.fixture(scope="module")
def vocab(tiny_encoder):
    return Vocabulary(tiny_encoder)


def _ams(enc, concept, sigma0, n=5):
    return AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(sigma0=sigma0, k=9.0, n=n))


def _attacks(enc, concept, vocab, smoothing=None):
    """Ring-A-Bell (with elitism, on whole-word tokens so that re-tokenizing is exact) and concept-PGD."""
    return [RingABell(enc, concept, RingABellConfig(tokens=6, iterations=6, population=16, elitism=True),
                      smoothing, vocab),
            ConceptPGD(enc, concept, ConceptPGDConfig(tokens=4, iterations=8), smoothing, vocab)]


def test_vocabulary_is_real_whole_word_tokens(tiny_encoder, vocab):
    tok = tiny_encoder.tokenizer
    ids = vocab.ids.tolist()
    assert not set(ids) & set(tok.all_special_ids)
    assert 1000 < len(ids) < len(tok)
    sample = ids[::997]
    assert tok(tok.batch_decode([[i] for i in sample]), add_special_tokens=False)["input_ids"] == [[i] for i in sample]


def test_no_vocabulary_holds_special_or_unused_tokens(minilm):
    """Issue 28: attack prompts on MiniLM (the lab's encoder) contained BERT's reserved slots such as
    `[unused860]`; neither search space may hold them, nor [CLS]/[SEP]/[PAD]/[MASK]/[UNK]."""
    import re

    from amsmooth.attacks.vocab import token_ids

    tok = minilm.tokenizer
    unused = {i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))) if re.fullmatch(
        r"\[unused\d+\]", t)}
    assert len(unused) > 900                                   # the case: MiniLM's vocabulary has them
    for kind in ("all", "words"):
        ids = set(token_ids(minilm, kind).tolist())
        assert not ids & unused and not ids & set(tok.all_special_ids), kind
        assert not any(re.search(r"\[\w+\]", t) for t in tok.convert_ids_to_tokens(sorted(ids))), kind
    assert len(token_ids(minilm, "all")) == len(tok) - len(unused) - len(tok.all_special_ids)


def test_projection_returns_the_nearest_token(vocab):
    ids = vocab.ids[[3, 50, 700]]
    noise = torch.randn(3, vocab.embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    jitter = vocab.embed(ids) + 1e-4 * noise
    assert vocab.project(jitter).tolist() == ids.tolist()


def test_candidate_batch_matches_tokenizing_the_text(tiny_encoder, vocab):
    prefix = tiny_encoder.tokenize([PROMPT])
    suffix = vocab.ids[[5, 99, 1234]].tolist()
    built = candidate_batch(tiny_encoder, prefix, [suffix])
    text = f"{PROMPT} {tiny_encoder.tokenizer.decode(suffix)}"
    ref = tiny_encoder.tokenize([text])
    assert torch.equal(built.input_ids, ref.input_ids) and torch.equal(built.attention_mask, ref.attention_mask)
    assert torch.equal(built.content_mask, ref.content_mask) and torch.equal(built.word_index, ref.word_index)


@pytest.mark.parametrize("which", [0, 1], ids=["rab", "concept-pgd"])
def test_attack_lowers_its_loss_and_keeps_its_budget(tiny_encoder, tiny_nudity, vocab, which):
    attack = _attacks(tiny_encoder, tiny_nudity, vocab)[which]
    result = attack.run(PROMPT, torch.Generator().manual_seed(0))
    K = attack.config.tokens
    assert len(result.history) == attack.config.iterations
    assert result.history[-1] < result.history[0]
    assert all(b <= a for a, b in pairwise(result.history))     # best-so-far never rises
    assert len(result.tokens) == K and set(result.tokens) <= set(vocab.ids.tolist())
    retok = tiny_encoder.tokenize([result.prompt]).content_ids[0]
    assert result.exact
    if attack.config.mode == "replace":
        assert retok == result.tokens
    else:
        assert result.prompt.startswith(PROMPT) and retok[-K:] == result.tokens
        assert len(retok) == len(tiny_encoder.tokenize([PROMPT]).content_ids[0]) + K
    # the reported loss is the objective of the text as the pipeline reads it
    assert result.loss == pytest.approx(result.history[-1], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["rab", "concept-pgd"])
def test_attack_is_reproducible_with_a_seed(tiny_encoder, tiny_nudity, vocab, which):
    a = _attacks(tiny_encoder, tiny_nudity, vocab)[which]
    r1 = a.run(PROMPT, torch.Generator().manual_seed(3))
    r2 = a.run(PROMPT, torch.Generator().manual_seed(3))
    r3 = a.run(PROMPT, torch.Generator().manual_seed(4))
    assert (r1.prompt, r1.history) == (r2.prompt, r2.history)
    assert r1.tokens != r3.tokens


def test_append_mode_cuts_a_long_prompt_to_leave_room(tiny_encoder, tiny_nudity, vocab):
    long_prompt = " ".join(["beach"] * 100)
    attack = ConceptPGD(tiny_encoder, tiny_nudity, ConceptPGDConfig(tokens=5, iterations=2), vocabulary=vocab)
    result = attack.run(long_prompt, torch.Generator().manual_seed(0))
    retok = tiny_encoder.tokenize([result.prompt]).content_ids[0]
    assert len(retok) == tiny_encoder.max_content and retok[-5:] == result.tokens


def test_adaptive_objective_differs_at_positive_sigma_and_equals_at_zero(tiny_encoder, tiny_nudity, vocab):
    target = concept_target(tiny_encoder, PROMPT, tiny_nudity.direction, 3.0)
    prefix = tiny_encoder.tokenize([PROMPT])
    suffixes = vocab.sample((4, 3), torch.Generator().manual_seed(0)).tolist()
    plain = TextObjective(tiny_encoder, target, "mse")
    base = plain.losses(prefix, suffixes, None)
    for sigma0, same in [(0.0, True), (0.05, False)]:
        adaptive = TextObjective(tiny_encoder, target, "mse", _ams(tiny_encoder, tiny_nudity, sigma0), eot_samples=2)
        z = adaptive.draw(torch.Generator().manual_seed(1))
        assert z.shape == (2, 5, tiny_encoder.max_length, tiny_encoder.hidden_size)
        got = adaptive.losses(prefix, suffixes, z)
        if same:
            torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-7)
        else:
            assert (got - base).abs().min() > 1e-6


def test_adaptive_value_is_the_defended_median(tiny_encoder, tiny_nudity, vocab):
    """The adaptive forward value is exactly what AMS computes with the same noise."""
    ams = _ams(tiny_encoder, tiny_nudity, 0.05, n=5)
    target = concept_target(tiny_encoder, PROMPT, tiny_nudity.direction, 3.0)
    obj = TextObjective(tiny_encoder, target, "mse", ams, eot_samples=1)
    batch = tiny_encoder.tokenize([PROMPT])
    obj.noise_generator = torch.Generator().manual_seed(2)          # the smoothing noise's own stream
    h = obj.conditioning(batch, obj.draw(None))[:, 0]
    sigma = ams.scores(batch).sigma
    ref = ams.smooth(batch, sigma, torch.Generator().manual_seed(2))
    torch.testing.assert_close(h.detach(), ref, rtol=1e-5, atol=1e-6)


def test_straight_through_median_gradient_is_the_mean():
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = straight_through_median(x)
    torch.testing.assert_close(y, x.median(dim=1).values)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 5))


def test_adaptive_gradient_goes_through_the_noise(tiny_encoder, tiny_nudity, vocab):
    target = concept_target(tiny_encoder, PROMPT, tiny_nudity.direction, 3.0)
    prefix = tiny_encoder.tokenize([PROMPT])
    suffix = vocab.sample((3,), torch.Generator().manual_seed(0)).tolist()
    _, g_plain = TextObjective(tiny_encoder, target).loss_and_grad(prefix, suffix, None)
    adaptive = TextObjective(tiny_encoder, target, "mse", _ams(tiny_encoder, tiny_nudity, 0.05))
    _, g_adapt = adaptive.loss_and_grad(prefix, suffix, adaptive.draw(torch.Generator().manual_seed(0)))
    assert g_plain.shape == g_adapt.shape == (3, tiny_encoder.hidden_size)
    assert g_adapt.abs().sum() > 0 and not torch.allclose(g_plain, g_adapt)


@pytest.mark.parametrize("which", [0, 1], ids=["rab", "concept-pgd"])
def test_adaptive_attack_runs_through_the_defense(tiny_encoder, tiny_nudity, vocab, which):
    ams = _ams(tiny_encoder, tiny_nudity, 0.05, n=3)
    attack = _attacks(tiny_encoder, tiny_nudity, vocab, ams)[which]
    before = ams.encoder.rows
    r1 = attack.run(PROMPT, torch.Generator().manual_seed(0))
    r2 = attack.run(PROMPT, torch.Generator().manual_seed(0))
    assert attack.adaptive and r1.prompt == r2.prompt and r1.loss == r2.loss
    assert len(r1.tokens) == attack.config.tokens and r1.exact
    evaluated = getattr(attack.config, "population", 2) // 2             # new candidates per iteration (rab)
    assert ams.encoder.rows - before >= 2 * 3 * attack.config.iterations * evaluated   # n noisy rows each


def test_genetic_operators_keep_shape_and_vocabulary(vocab):
    g = torch.Generator().manual_seed(0)
    parents = vocab.sample((10, 6), g)
    children = crossover(parents, 1.0, g)
    assert children.shape == (30, 6) and torch.equal(children[:10], parents)
    mutated = mutate(children, 1.0, vocab, g, elitism=True)
    assert torch.equal(mutated[0], children[0])                       # elitism: the best is never mutated
    assert (mutated != children).any(dim=1)[1:].float().mean() > 0.8  # (a draw may repeat the old token)
    assert set(mutated.flatten().tolist()) <= set(vocab.ids.tolist())
    reference = mutate(children, 1.0, vocab, torch.Generator().manual_seed(1))     # the reference mutates all
    assert not torch.equal(reference[0], children[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"tokens": 0}, "tokens"), ({"tokens": -2}, "tokens"), ({"iterations": 0}, "iterations"),
    ({"mode": "sideways"}, "mode"), ({"loss": "l1"}, "loss"), ({"eot_samples": 0}, "eot_samples"),
    ({"population": 1}, "population"), ({"mutation_rate": 1.5}, "mutation_rate"),
])
def test_bad_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(AmsmoothError, match=match):
        RingABellConfig(**kwargs)


def test_tokens_beyond_the_encoder_length_is_refused(tiny_encoder, tiny_nudity, vocab):
    with pytest.raises(AmsmoothError, match="exceeds"):
        RingABell(tiny_encoder, tiny_nudity, RingABellConfig(tokens=200), vocabulary=vocab)


def test_attack_registry_and_unknown_names():
    from amsmooth.attacks import P4D, UnlearnDiffAtk

    assert attack_class("rab") is RingABell and attack_class("concept-pgd") is ConceptPGD
    assert attack_class("uda") is UnlearnDiffAtk and attack_class("p4d") is P4D
    assert attack_class("concept-pgd") is ConceptPGD
    with pytest.raises(AmsmoothError, match="unknown attack 'gcg'"):
        attack_class("gcg")
    with pytest.raises(AmsmoothError, match="'qf' is QF-Attack as published"):
        attack_class("qf-pgd")


def test_concept_for_another_encoder_is_refused(tiny_nudity, vocab):
    from amsmooth.models.tiny import tiny_text_encoder

    other = tiny_text_encoder(seed=1)
    with pytest.raises(AmsmoothError, match="was built for"):
        RingABell(other, tiny_nudity)
