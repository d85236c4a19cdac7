"""Core: encoder adapter, Algorithm 1 relevance, noise schedule, text-stage median smoothing."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from _cli_errors import one_line_error
from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, Concept, SmoothingConfig, TextEncoder
from amsmooth.cli.main import main
from amsmooth.concepts import builtin_pairs_path
from amsmooth.relevance import (
    WordCache,
    combine_global,
    concept_cosine,
    differential_embeddings,
    noise_schedule,
    removals,
)

PROMPT = "a nude woman on a beach"


def _ams(enc, concepts, **cfg) -> AdaptiveMedianSmoothing:
    return AdaptiveMedianSmoothing(enc, concepts, SmoothingConfig(**cfg))


# ---------------------------------------------------------------- pure functions, hand-computed
def test_removals_closes_up_the_sequence():
    assert removals([5, 6, 7]) == [(5, 6, 7), (6, 7), (5, 7), (5, 6)]
    assert removals([9]) == [(9,), ()]


def test_cosine_and_combination_rule_by_hand():
    full = torch.tensor([[1.0, 0.0], [0.0, 1.0]])               # T(y), L=2, D=2
    without = torch.tensor([[[0.0, 0.0], [0.0, 1.0]],           # T(y \ token 1)
                            [[1.0, 0.0], [1.0, 1.0]]])          # T(y \ token 2)
    diffs = differential_embeddings(full, without)              # [[1,0],[0,0]] and [[0,0],[-1,0]]
    directions = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],        # concept A
                               [[0.0, 0.0], [1.0, 0.0]]])       # concept B
    cos = concept_cosine(diffs, directions)
    assert torch.allclose(cos, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    # sim = max(sim, (sim + sim_glb)/2): raised only when global exceeds local
    local, glob = torch.tensor([0.2, 0.5, -0.4]), torch.tensor([0.6, 0.1, -0.2])
    assert torch.allclose(combine_global(local, glob), torch.tensor([0.4, 0.5, -0.3]))
    # several concepts → max
    assert torch.allclose(cos.max(-1).values, torch.tensor([1.0, 0.0]))


def test_noise_schedule_exponential_and_special_tokens():
    sim = torch.tensor([[0.0, 0.1, 0.5, 0.0]])
    mask = torch.tensor([[False, True, True, False]])
    sigma = noise_schedule(sim, 0.006, 9.0, mask)
    assert sigma[0, 0] == 0 and sigma[0, 3] == 0
    assert math.isclose(float(sigma[0, 1]), 0.006 * math.exp(0.9), rel_tol=1e-6)
    assert math.isclose(float(sigma[0, 2]), 0.006 * math.exp(4.5), rel_tol=1e-6)
    assert float(noise_schedule(sim, 0.006, 9.0, mask, noise_special_tokens=True)[0, 0]) == pytest.approx(0.006)


def test_word_cache_is_bounded_lru():
    cache = WordCache(2)
    cache.put((1,), torch.ones(1))
    cache.put((2,), torch.ones(1))
    assert cache.get((1,)) is not None        # (1,) becomes most recent
    cache.put((3,), torch.ones(1))            # evicts (2,)
    assert cache.get((2,)) is None and len(cache) == 2


@pytest.mark.parametrize("bad", [dict(sigma0=-0.1), dict(sigma0=float("nan")), dict(k=float("inf")),
                                 dict(n=0), dict(n=2.5)])
def test_invalid_config(bad):
    with pytest.raises(AmsmoothError):
        SmoothingConfig(**bad)


# ---------------------------------------------------------------- tokenization
def test_clip_tokenization_matches_pipeline_and_groups_words(tiny_encoder):
    prompts = [PROMPT, "", "an unbelievablyyyy teapotsaurus"]
    batch = tiny_encoder.tokenize(prompts)
    ref = tiny_encoder.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
    assert torch.equal(batch.input_ids, ref)
    assert batch.words(1) == []
    for positions in batch.words(2):          # every CLIP word ends at its only '</w>' token
        toks = [batch.tokens[2][p] for p in positions]
        assert toks[-1].endswith("</w>") and not any(t.endswith("</w>") for t in toks[:-1])
    assert any(len(p) > 1 for p in batch.words(2))


def test_wordpiece_grouping(minilm):
    batch = minilm.tokenize(["a topless man"])
    words = [[batch.tokens[0][p] for p in pos] for pos in batch.words(0)]
    assert words == [["a"], ["top", "##less"], ["man"]]


def test_long_prompt_truncated_with_warning(tiny_encoder):
    long = " ".join(["cat"] * 80) + " zebra"
    with pytest.warns(UserWarning, match=r"^1 prompt\(s\) longer than 77 tokens .*the longest: 83 tokens") as got:
        batch = tiny_encoder.tokenize([long, "a cat"])
    assert len(got) == 1 and "zebra" not in str(got[0].message)          # never the prompt's text (issue 28)
    assert batch.input_ids.shape == (2, 77) and int(batch.content_mask[0].sum()) == 75
    assert batch.dropped == ["cat cat cat cat cat zebra", ""]           # the text stays available to callers


# ---------------------------------------------------------------- smoothing
def test_sigma0_zero_reproduces_plain_embedding_exactly(tiny_encoder, tiny_nudity, generator):
    ams = _ams(tiny_encoder, [tiny_nudity], sigma0=0.0)
    assert torch.equal(ams.encode([PROMPT, "a cat"], generator=generator), tiny_encoder.encode([PROMPT, "a cat"]))


def test_zero_noise_through_the_noisy_path_matches_plain(tiny_encoder, tiny_nudity, generator):
    ams = _ams(tiny_encoder, [tiny_nudity], n=3)
    batch = tiny_encoder.tokenize([PROMPT])
    h = ams.noisy_encodings(batch, torch.zeros(1, 77), 3, generator)
    assert torch.allclose(h[0], tiny_encoder.encode([PROMPT]), atol=1e-6)


def test_seeded_and_shaped(tiny_encoder, tiny_nudity):
    ams = _ams(tiny_encoder, [tiny_nudity], sigma0=0.05)
    a = ams.encode([PROMPT, "a cat"], generator=torch.Generator().manual_seed(1))
    b = ams.encode([PROMPT, "a cat"], generator=torch.Generator().manual_seed(1))
    c = ams.encode([PROMPT, "a cat"], generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 77, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, tiny_encoder.encode([PROMPT, "a cat"]))


def test_median_is_elementwise_median_of_the_samples(tiny_encoder, tiny_nudity):
    ams = _ams(tiny_encoder, [tiny_nudity], sigma0=0.05, n=5)
    batch = tiny_encoder.tokenize([PROMPT])
    sigma = ams.scores(batch).sigma
    samples = ams.noisy_encodings(batch, sigma, 5, torch.Generator().manual_seed(3))
    smoothed = ams.smooth(batch, sigma, torch.Generator().manual_seed(3))
    assert torch.equal(smoothed, samples.sort(dim=0).values[2])
    assert not torch.equal(samples[0], samples[1])


def test_chunking_does_not_change_the_result(tiny_encoder, tiny_nudity):
    big = _ams(tiny_encoder, [tiny_nudity], sigma0=0.05, n=7)
    small = _ams(tiny_encoder, [tiny_nudity], sigma0=0.05, n=7, max_batch=3)
    a = big.encode([PROMPT, "a cat"], generator=torch.Generator().manual_seed(5))
    b = small.encode([PROMPT, "a cat"], generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-6)


def test_empty_prompt_gets_no_noise(tiny_encoder, tiny_nudity, generator):
    ams = _ams(tiny_encoder, [tiny_nudity], sigma0=0.05)
    assert ams.relevance([""])[0]["tokens"] == []
    assert torch.equal(ams.encode([""], generator=generator), tiny_encoder.encode([""]))


def test_hook_removed_after_exception(tiny_encoder):
    ids, mask = tiny_encoder.build_ids([[320, 2368]])
    with pytest.raises(AmsmoothError):        # wrong noise shape raises inside the forward pass
        tiny_encoder.encode_ids(ids, mask, noise=torch.zeros(2, 77, 32))
    assert not tiny_encoder.embedding._forward_hooks
    with pytest.raises(RuntimeError):
        with tiny_encoder.noise_hook(torch.zeros(1, 77, 32)):
            raise RuntimeError("boom")
    assert not tiny_encoder.embedding._forward_hooks


# ---------------------------------------------------------------- Algorithm 1 against a literal re-implementation
def _reference_sim(enc: TextEncoder, direction: torch.Tensor, ids: list[int], j: int) -> float:
    """cos(T(ids) − T(ids without token j), Δ) computed the slow, literal way."""
    a, _ = enc.build_ids([ids])
    b, _ = enc.build_ids([ids[:j] + ids[j + 1:]])
    with torch.no_grad():
        diff = enc.encode_ids(a) - enc.encode_ids(b)
    return float(torch.nn.functional.cosine_similarity(diff.flatten(), direction.flatten(), dim=0))


def test_relevance_matches_algorithm_1_literally(tiny_encoder, tiny_nudity):
    violence = Concept.from_pairs(tiny_encoder, builtin_pairs_path("violence"), name="violence")
    prompt = "a nude teapotsaurus bleeding"
    ams = _ams(tiny_encoder, [tiny_nudity, violence], use_global=True)
    result = ams.relevance([prompt])[0]["tokens"]
    batch = tiny_encoder.tokenize([prompt])
    content = batch.content_ids[0]
    for t_index, tok in enumerate(result):
        word_pos = batch.words(0)[tok["word_index"]]
        word_ids = batch.input_ids[0, word_pos].tolist()
        j = word_pos.index(tok["position"])
        per_concept = []
        for c in (tiny_nudity, violence):
            loc = _reference_sim(tiny_encoder, c.direction, word_ids, j)
            glb = _reference_sim(tiny_encoder, c.direction, content, t_index)
            per_concept.append((loc, glb, max(loc, (loc + glb) / 2)))
        assert tok["sim_local"] == pytest.approx(max(p[0] for p in per_concept), abs=1e-5)
        assert tok["sim_global"] == pytest.approx(max(p[1] for p in per_concept), abs=1e-5)
        assert tok["sim"] == pytest.approx(max(p[2] for p in per_concept), abs=1e-5)
        assert tok["sigma"] == pytest.approx(0.006 * math.exp(9 * tok["sim"]), rel=1e-5)


def test_cache_returns_what_a_fresh_computation_returns(tiny_encoder, tiny_nudity):
    warm = _ams(tiny_encoder, [tiny_nudity])
    warm.relevance([PROMPT])
    calls = tiny_encoder.calls
    second = warm.relevance([PROMPT + " again"])
    assert warm.cache.hits > 0 and tiny_encoder.calls == calls + 1   # only the new word was encoded
    fresh = _ams(tiny_encoder, [tiny_nudity], cache_size=0).relevance([PROMPT + " again"])
    assert second == fresh
    warm.relevance([PROMPT])
    assert tiny_encoder.calls == calls + 2                            # fully cached: no encoder call


def test_encoder_calls_per_prompt(tiny_encoder, tiny_nudity, generator):
    for use_global in (False, True):
        ams = _ams(tiny_encoder, [tiny_nudity], use_global=use_global, sigma0=0.01)
        before = tiny_encoder.calls
        ams.encode([PROMPT], generator=generator)
        assert tiny_encoder.calls - before <= 2          # relevance pass + noisy pass
        before = tiny_encoder.calls
        ams.encode([PROMPT], generator=generator)
        assert tiny_encoder.calls - before == (2 if use_global else 1)   # warm cache


# ---------------------------------------------------------------- loading the encoder (concepts: test_concepts.py)
def test_unknown_model_offline_says_how_to_pass_a_folder():
    with pytest.raises(AmsmoothError, match="local folder"):
        TextEncoder.from_pretrained("no-such-org/no-such-model-xyz", local_files_only=True)


# ---------------------------------------------------------------- real semantics on the real MiniLM encoder
@pytest.mark.parametrize("concept,hot,cold", [
    ("nudity", ["naked", "nude", "topless"], ["teapot", "bicycle", "mountain"]),
    ("violence", ["bleeding", "blood", "stabbed"], ["teapot", "bicycle", "mountain"]),
])
def test_minilm_concept_words_stand_out(minilm, concept, hot, cold):
    ams = AdaptiveMedianSmoothing(minilm, [Concept.builtin(concept, minilm)], SmoothingConfig())
    def word_sigma(word: str) -> float:
        return max(t["sigma"] for t in ams.relevance([f"a photo of a {word}"])[0]["tokens"] if t["word"] == word)
    assert min(word_sigma(w) for w in hot) > max(word_sigma(w) for w in cold)


# -- hardening, second pass (issue 28): concept values and shape, pair files, tokenization -------------------


def test_special_token_text_in_a_prompt_is_plain_text(tiny_encoder, minilm):
    batch = tiny_encoder.tokenize(["a cat <|endoftext|> dog"])
    content = batch.content_ids[0]
    assert tiny_encoder.tokenizer.eos_token_id not in content and len(content) > 3   # "<", "|", "endof", …
    assert batch.tokens[0][len(content)] == "dog</w>"                 # the prompt goes on after the text
    words = minilm.tokenize(["a [SEP] b [CLS]"]).content_ids[0]
    assert minilm.tokenizer.sep_token_id not in words and minilm.tokenizer.cls_token_id not in words


def test_a_huge_prompt_is_cut_before_tokenizing_and_keeps_the_same_tokens(tiny_encoder, monkeypatch):
    import warnings

    prompt = "a nude woman on a beach " * 40000                          # ~1 MB
    seen = []
    real = tiny_encoder.tokenizer.__class__.__call__
    monkeypatch.setattr(tiny_encoder.tokenizer.__class__, "__call__",
                        lambda self, text, *a, **k: (seen.append(len(text[0] if isinstance(text, list) else text)),
                                                     real(self, text, *a, **k))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = tiny_encoder.tokenize([prompt])
    assert max(seen) <= 64 * tiny_encoder.max_length                   # never the whole megabyte
    monkeypatch.undo()
    full = tiny_encoder.tokenizer(prompt[:20000], add_special_tokens=False)["input_ids"][:tiny_encoder.max_content]
    assert batch.content_ids[0] == full


def test_smoothing_n_has_the_shared_upper_bound():
    from amsmooth.limits import SMOOTHING_N

    assert SmoothingConfig(n=101).n == 101
    with pytest.raises(AmsmoothError, match=r"n must be >= 1 and <= 101, got 102"):
        SmoothingConfig(n=102)
    assert SMOOTHING_N.high == 101


def test_sigma_that_would_overflow_is_refused(capsys):
    from amsmooth.config import SIGMA_MAX, SmoothingConfig

    for k in (100.0, -100.0, 1e6):
        with pytest.raises(AmsmoothError, match="exceeds"):
            SmoothingConfig(k=k)
    assert SmoothingConfig(sigma0=0.012, k=9.0).sigma0 == 0.012           # the paper's largest setting passes
    assert SmoothingConfig(sigma0=0.0, k=1e6).k == 1e6                     # σ ≡ 0: nothing can overflow
    assert 0.012 * 2.718281828 ** 9 < SIGMA_MAX
    assert main(["relevance", "a nude woman", "--encoder", "tiny", "--k", "200", "--format", "jsonl"]) == 2
    assert "exceeds" in one_line_error(capsys)
    # certify printed `nan` before: now refused before any sampling
    assert main(["certify", "a nude woman", "--encoder", "tiny", "--rho", "1", "--n", "7", "--k", "200"]) == 2
    assert "exceeds" in one_line_error(capsys)


def test_word_cache_smaller_than_a_batch_gives_the_uncached_scores(tiny_encoder, tiny_nudity):
    from amsmooth import AdaptiveMedianSmoothing, SmoothingConfig

    prompts = ["a nude cat", "a nude cat on a red mat with green dogs and blue birds"]
    small = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(cache_size=2))
    none = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(cache_size=0))
    small.relevance(prompts[:1])                         # caches two of the words the next batch reuses
    got = small.relevance(prompts)                       # used to raise KeyError (evicted while counted cached)
    assert got == none.relevance(prompts) and len(small.cache) == 2


def test_smoothed_embedding_of_a_prompt_does_not_depend_on_its_batch(tiny_encoder, tiny_nudity):
    import torch

    from amsmooth import AdaptiveMedianSmoothing, SmoothingConfig

    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(n=5, sigma0=0.05))
    prompts = ["a nude woman on a beach", "a red car", "two dogs playing in the snow"]
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    alone = [ams.encode([p], g(11 + i)) for i, p in enumerate(prompts)]
    together = ams.encode(prompts, [g(11), g(12), g(13)])            # one generator per prompt
    reordered = ams.encode(prompts[::-1], [g(13), g(12), g(11)])
    for i in range(3):
        assert torch.equal(together[i], alone[i][0]) and torch.equal(reordered[2 - i], alone[i][0])
    shared = ams.encode(prompts, g(5))                                 # one generator for all: as if alone
    assert all(torch.equal(shared[i], ams.encode([p], g(5))[0]) for i, p in enumerate(prompts))
    with pytest.raises(AmsmoothError, match="one per prompt"):
        ams.encode(prompts, [g(1), g(2)])


def test_first_minilm_use_prints_nothing_on_stdout(tmp_path, monkeypatch, capsys):
    """The package prints a banner when imported and when it extracts: on the first ``--encoder minilm`` run that
    led stdout, breaking ``--format jsonl``. A fresh import and a fresh cache must print nothing."""
    import sys

    from amsmooth.encoders import minilm_folder

    monkeypatch.setenv("AMSMOOTH_CACHE_DIR", str(tmp_path))
    monkeypatch.delitem(sys.modules, "all_minilm_l6_v2", raising=False)
    capsys.readouterr()
    folder = minilm_folder()
    assert (Path(folder) / "config.json").is_file() and capsys.readouterr().out == ""
