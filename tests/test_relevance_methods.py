"""Relevance methods (SmoothingConfig.relevance): shapes, determinism, Algorithm 1 unchanged, the calibrated scale,
the quality measure (AUROC) and the plumbing to the CLI, the server and the certificate."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from amsmooth.certify import certify
from amsmooth.cli.main import build_parser
from amsmooth.config import RELEVANCE_METHODS, SmoothingConfig
from amsmooth.errors import AmsmoothError
from amsmooth.relevance import concept_cosine
from amsmooth.relevance_methods import METHODS, candidate_words
from amsmooth.relevance_quality import QualityRow, TokenClass, auroc, relevance_quality
from amsmooth.relevance_scale import UNIT, Scale
from amsmooth.smoothing import AdaptiveMedianSmoothing

PROMPTS = ["a photo of a naked woman on the beach", "a red teapot", "", "a photo of a naked woman on the beach"]


@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_each_method_shape_range_and_determinism(name, tiny_encoder, tiny_nudity, single_thread):
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(relevance=name))
    batch = tiny_encoder.tokenize(PROMPTS)
    with torch.no_grad():
        a = ams.scores(batch)
    B, L = len(PROMPTS), tiny_encoder.max_length
    assert a.sim.shape == a.sigma.shape == (B, L)
    assert torch.all(a.sim[~batch.content_mask] == 0) and torch.all(a.sigma[~batch.content_mask] == 0)
    assert torch.all(a.sim.abs() <= 1) and torch.all(a.sigma[batch.content_mask] > 0)
    assert torch.equal(a.sim[0], a.sim[3])                               # the same prompt, the same scores
    fresh = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(relevance=name))
    with torch.no_grad():
        b = fresh.scores(tiny_encoder.tokenize(PROMPTS[1:2]))             # alone, no cache, new scale
    assert torch.equal(a.sim[1], b.sim[0]) and torch.equal(a.sigma[1], b.sigma[0])


def test_algorithm1_is_the_default_and_the_papers_formula(tiny_encoder, tiny_nudity):
    assert SmoothingConfig().relevance == "algorithm1" and not METHODS["algorithm1"].calibrated
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig())
    batch = tiny_encoder.tokenize(["a naked woman"])
    with torch.no_grad():
        got = ams.scores(batch)
    for positions in batch.words(0):
        for j, pos in enumerate(positions):
            ids = batch.input_ids[0, positions].tolist()
            emb = tiny_encoder.encode_chunked(*tiny_encoder.build_ids([ids, ids[:j] + ids[j + 1:]]), 8)
            want = concept_cosine((emb[0] - emb[1])[None], tiny_nudity.direction[None])[0, 0]
            assert float(got.sim[0, pos]) == float(want)                  # byte for byte
            assert float(got.sigma[0, pos]) == float(0.006 * torch.exp(9.0 * want))


def test_calibrated_scale_maps_median_to_zero_and_q99_to_unit():
    s = Scale(median=(0.2,), q99=(0.4,))
    out = s.apply(torch.tensor([[0.2], [0.4], [100.0], [-100.0]]))
    assert out.flatten().tolist() == pytest.approx([0.0, UNIT, 1.0, -1.0])


def test_calibration_is_cached_on_disk_and_equal(tiny_encoder, tiny_nudity):
    cfg = SmoothingConfig(relevance="contextual")
    a = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], cfg)
    batch = tiny_encoder.tokenize(PROMPTS[:2])
    with torch.no_grad():
        first = a.scores(batch).sim
        rows = tiny_encoder.rows
        second = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], cfg).scores(batch).sim
    assert torch.equal(first, second)
    assert tiny_encoder.rows - rows == 2 + sum(len(c) for c in batch.content_ids)   # no neutral prompt again


def test_global_is_algorithm1s_flag(tiny_encoder):
    with pytest.raises(AmsmoothError, match="--global is Algorithm 1's flag"):
        SmoothingConfig(relevance="contextual", use_global=True)
    with pytest.raises(AmsmoothError, match="relevance must be one of"):
        SmoothingConfig(relevance="oracle")


def test_candidate_words_are_the_positives_own():
    pos = ["a nude man on a bed", "the nude woman, bare", "a man on a bed"]
    neg = ["a clothed man on a bed", "the dressed woman, calm", "a man on a bed"]
    assert candidate_words(pos, neg) == ["nude"]
    assert candidate_words(pos, neg, min_pairs=1) == ["nude", "bare"]


def test_subspace_refuses_a_concept_without_its_pairs(tiny_encoder, tiny_nudity):
    other = dataclasses.replace(tiny_nudity, name="custom")
    ams = AdaptiveMedianSmoothing(tiny_encoder, [other], SmoothingConfig(relevance="subspace"))
    with pytest.raises(AmsmoothError, match="mines the concept's words from its pairs"):
        ams.relevance(["a nude man"])


@pytest.mark.parametrize("name", ["contextual", "subspace"])
def test_real_minilm_ranks_naked_above_teapot(name, minilm):
    """On the method's raw scores (the calibration is monotone, and measuring it on 64 prompts is slow here)."""
    from amsmooth.concepts import Concept

    concept = Concept.builtin("nudity", minilm)
    ams = AdaptiveMedianSmoothing(minilm, [concept], SmoothingConfig(relevance=name))
    batch = minilm.tokenize(["a photo of a naked person", "a photo of a teapot"])
    with torch.no_grad():
        raw = METHODS[name].fn(ams.context(), batch).local[..., 0]
    naked, teapot = (float(raw[b, batch.words(b)[4]].max()) for b in range(2))
    assert [minilm.word_text(batch.input_ids[b, batch.words(b)[4]].tolist()) for b in range(2)] == ["naked", "teapot"]
    assert naked > teapot


def test_auroc_on_a_constructed_case():
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0, 3.0], [2.0]) == 0.5
    assert auroc([2.0], [2.0, 1.0]) == 0.75                    # one tie counts half
    assert auroc([0.1, 0.4, 0.35, 0.8], [0.0, 0.3, 0.5, 0.2]) == pytest.approx(11 / 16)
    with pytest.raises(AmsmoothError, match="both classes"):
        auroc([], [1.0])


def test_relevance_quality_rows(tiny_encoder, tiny_nudity):
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(k=9.0))
    rows = relevance_quality(ams, [TokenClass("words", ("a naked man", "a nude woman"),
                                              lambda w: w in {"naked", "nude"})],
                             TokenClass("benign", ("a red car", "a tree"), lambda w: w != "a"), "tiny")
    (row,) = rows
    assert isinstance(row, QualityRow) and row.method == "algorithm1" and row.encoder == "tiny"
    assert row.tokens >= 2 and row.benign_tokens >= 3 and 0 <= row.auroc <= 1
    rel = ams.relevance(["a naked man", "a nude woman"])
    mults = [math.exp(9.0 * t["sim"]) for r in rel for t in r["tokens"] if t["word"] in ("naked", "nude")]
    assert row.mult_max == pytest.approx(max(mults)) and row.mult_mean == pytest.approx(sum(mults) / len(mults))


def test_cli_flag_and_help_list_the_methods(capsys):
    from amsmooth.cli.common import smoothing_config

    parser = build_parser()
    args = parser.parse_args(["relevance", "x", "--encoder", "tiny", "--relevance", "subspace"])
    assert smoothing_config(args).relevance == "subspace"
    for command in (["generate", "x", "--model", "tiny", "--out", "o"],
                    ["certify", "x", "--encoder", "tiny", "--rho", "1"]):
        assert smoothing_config(parser.parse_args([*command, "--relevance", "contextual"])).relevance == "contextual"
    with pytest.raises(AmsmoothError, match="invalid choice"):
        parser.parse_args(["relevance", "x", "--encoder", "tiny", "--relevance", "bogus"])
    with pytest.raises(SystemExit):
        parser.parse_args(["relevance", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in RELEVANCE_METHODS)


def test_server_requests_take_a_method():
    from pydantic import ValidationError

    from amsmooth.serve.schemas import RelevanceRequest

    assert RelevanceRequest(prompt="x", relevance="subspace").overrides() == {"relevance": "subspace"}
    with pytest.raises(ValidationError):
        RelevanceRequest(prompt="x", relevance="bogus")


def test_sidecar_config_records_the_method():
    assert SmoothingConfig(relevance="contextual").to_dict()["relevance"] == "contextual"


def test_certify_refuses_a_method_whose_sigma_reads_the_embeddings(tiny_encoder, tiny_nudity):
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig())
    ams.method = dataclasses.replace(ams.method, name="model-aware", sigma_reads="the token embeddings")
    with pytest.raises(AmsmoothError, match="no certificate is reported"):
        certify(ams, ["a naked man"], rho=1.0, n=10)


def test_pooled_is_clips_own_pooled_output_and_a_prompt_token_mean_elsewhere(tiny_encoder):
    from amsmooth.relevance_methods import pooled

    batch = tiny_encoder.tokenize(["a naked man", "", "tree"])                    # [3, L]
    with torch.no_grad():
        out = tiny_encoder.model(batch.input_ids)
    got = pooled(tiny_encoder, out[0], batch.content_mask)                        # [3, D]
    assert got.shape == (3, tiny_encoder.hidden_size)
    assert torch.allclose(got, out.pooler_output.float(), atol=1e-6)             # CLIP: the end-of-text state
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    content = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)  # [CLS] w w [SEP] [PAD] ...

    class NotClip:
        is_clip = False

    want = torch.stack([hidden[0, 1:3].mean(0), hidden[1, 1:4].mean(0)])
    assert torch.equal(pooled(NotClip(), hidden, content), want)                 # special tokens never count


def test_proximity_scores_whole_words_alone_and_the_same_in_any_prompt(tiny_encoder, tiny_nudity):
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(relevance="proximity"))
    batch = tiny_encoder.tokenize(["a naked woman", "the beach and a naked tree"])
    with torch.no_grad():
        raw = METHODS["proximity"].fn(ams.context(), batch).local                 # [B, L, C]
    assert raw.shape == (2, tiny_encoder.max_length, 1)
    assert torch.all(raw[~batch.content_mask] == 0) and torch.all(raw.abs() <= 1 + 1e-6)
    for b in range(2):
        for positions in batch.words(b):
            assert torch.all(raw[b, positions] == raw[b, positions[0]])           # one score per word
    naked = [float(raw[b, p[0], 0]) for b in range(2) for p in batch.words(b)
             if tiny_encoder.word_text(batch.input_ids[b, p].tolist()) == "naked"]
    assert len(naked) == 2 and naked[0] == naked[1]                                # the word alone, not its context


def test_proximity_refuses_a_concept_without_its_pairs(tiny_encoder, tiny_nudity):
    other = dataclasses.replace(tiny_nudity, name="custom")
    ams = AdaptiveMedianSmoothing(tiny_encoder, [other], SmoothingConfig(relevance="proximity"))
    with pytest.raises(AmsmoothError, match="relevance 'proximity' mines the concept's words from its pairs"):
        ams.relevance(["a nude man"])


def test_real_minilm_proximity_ranks_a_held_out_synonym_above_unrelated_words(minilm):
    """'unclothed' is no word of the nudity pairs (so no anchor of its own); raw scores, as above."""
    from amsmooth.concepts import Concept, builtin_pairs_path, read_pairs

    pos, neg, _ = read_pairs(builtin_pairs_path("nudity"))
    assert "unclothed" not in candidate_words(pos, neg)
    ams = AdaptiveMedianSmoothing(minilm, [Concept.builtin("nudity", minilm)], SmoothingConfig(relevance="proximity"))
    prompts = ["a photo of an unclothed person", "a photo of an teapot person", "a photo of an orange person"]
    batch = minilm.tokenize(prompts)
    with torch.no_grad():
        raw = METHODS["proximity"].fn(ams.context(), batch).local[..., 0]
    scores = {minilm.word_text(batch.input_ids[b, batch.words(b)[4]].tolist()): float(raw[b, batch.words(b)[4][0]])
              for b in range(3)}
    assert set(scores) == {"unclothed", "teapot", "orange"}
    assert scores["unclothed"] > max(scores["teapot"], scores["orange"])


def test_certify_accepts_proximity_whose_sigma_reads_the_ids_only(tiny_encoder, tiny_nudity):
    from amsmooth.certify import check_method

    assert METHODS["proximity"].sigma_reads == "token ids"
    check_method(METHODS["proximity"])
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(relevance="proximity"))
    (cert,) = certify(ams, ["a naked man"], rho=1.0, n=5, generator=torch.Generator().manual_seed(0))
    assert cert is not None
