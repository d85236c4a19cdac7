"""Concepts: building from pairs, the safetensors file and its checks, pairs files, the built-in cache."""
from __future__ import annotations

import pytest
import torch

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, Concept
from amsmooth.cli.main import main


def test_a_concept_build_summarises_truncated_pairs_in_one_warning(tiny_encoder, tmp_path):
    """Issue 28: building a concept on the lab encoder printed one warning per long pair, with its text."""
    import warnings

    from amsmooth.concepts import Concept
    from amsmooth.encoders import PromptsTruncated

    rows = [(f"explicit{i} " + "nude " * (70 + i), f"clothed{i} " + "dressed " * (70 + i)) for i in range(40)]
    pairs = tmp_path / "long_pairs.csv"
    pairs.write_text("positive,negative\n" + "".join(f"{a},{b}\n" for a, b in rows))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        Concept.from_pairs(tiny_encoder, pairs, batch_size=4)
    shown = [w.message for w in got if isinstance(w.message, PromptsTruncated)]
    lengths = [len(tiny_encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 for r in rows for t in r]
    assert sum(n > 77 for n in lengths) > 40                                # many prompts, one warning
    assert len(shown) == 1 and (shown[0].count, shown[0].longest) == (sum(n > 77 for n in lengths), max(lengths))
    assert "explicit" not in str(shown[0]) and "nude" not in str(shown[0])


def test_concept_roundtrip_and_wrong_encoder(tmp_path, tiny_encoder, tiny_nudity):
    path = tmp_path / "c.safetensors"
    tiny_nudity.save(path)
    loaded = Concept.load(path, tiny_encoder)
    assert torch.equal(loaded.direction, tiny_nudity.direction) and loaded.pairs_count == 79
    from amsmooth.models.tiny import tiny_text_encoder

    other = tiny_text_encoder(seed=1)
    with pytest.raises(AmsmoothError, match="built for clip_text_model.*encoder in use is clip_text_model"):
        Concept.load(path, other)


def test_corrupted_concept_file(tmp_path, tiny_encoder):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AmsmoothError, match="not a valid amsmooth concept file"):
        Concept.load(bad, tiny_encoder)


@pytest.mark.parametrize("content,match", [("", "no prompt pairs|cannot tell"), ("a,b\n1,2\n", "cannot tell"),
                                           ("sensitive prompt,normal prompt\n", "no prompt pairs")])
def test_bad_pairs_files(tmp_path, tiny_encoder, content, match):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(AmsmoothError, match=match):
        Concept.from_pairs(tiny_encoder, path)


def test_builtin_concept_is_cached(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("AMSMOOTH_CACHE_DIR", str(tmp_path))
    first = Concept.builtin("nudity", tiny_encoder)
    assert len(list((tmp_path / "concepts").glob("nudity-*.safetensors"))) == 1
    calls = tiny_encoder.calls
    second = Concept.builtin("nudity", tiny_encoder)
    assert tiny_encoder.calls == calls and torch.equal(first.direction, second.direction)


def _write_concept(path, concept, direction):
    """A concept file as `Concept.save` writes it, with ``direction`` in place of the real one (a damaged or
    hand-made file: `Concept` itself refuses such directions)."""
    import json

    from safetensors.torch import save_file

    from amsmooth.concepts import FORMAT

    meta = {"format": FORMAT, "name": concept.name, "fingerprint": json.dumps(concept.fingerprint, sort_keys=True),
            "pairs_sha256": "", "pairs_count": "1"}
    save_file({"direction": direction.contiguous()}, str(path), metadata=meta)


@pytest.mark.parametrize("make,match", [
    (lambda d: torch.full_like(d, float("nan")), "NaN or infinite"),
    (lambda d: d.index_fill(0, torch.tensor([3]), float("inf")), "NaN or infinite"),
    (lambda d: torch.zeros_like(d), "all zeros"),
    (lambda d: d[:, :-1].contiguous(), r"shape \(77, 31\), but the encoder's outputs are \[77, 32\]"),
    (lambda d: d[None], r"shape \(1, 77, 32\), not \[L, D\]"),
])
def test_a_concept_with_bad_values_or_shape_is_refused_on_load(tmp_path, tiny_encoder, tiny_nudity, make, match):
    path = tmp_path / "bad.safetensors"
    _write_concept(path, tiny_nudity, make(tiny_nudity.direction))
    with pytest.raises(AmsmoothError, match=match):
        Concept.load(path, tiny_encoder)
    with pytest.raises(AmsmoothError, match=match):           # a direction given in code is checked too
        AdaptiveMedianSmoothing(tiny_encoder, [Concept("x", make(tiny_nudity.direction), tiny_nudity.fingerprint)])


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_nan_concept_stops_generate_and_eval_before_any_image(tmp_path, tiny_nudity, capsys, command):

    path, out = tmp_path / "nan.safetensors", tmp_path / "out"
    _write_concept(path, tiny_nudity, torch.full_like(tiny_nudity.direction, float("nan")))
    fast = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64", "--concept", str(path)]
    if command == "generate":
        argv = ["generate", "a cat", *fast, "--out", str(out)]
    else:
        prompts = tmp_path / "p.csv"
        prompts.write_text("prompt\na cat\n")
        argv = ["eval", "--prompts", str(prompts), *fast, "--defense", "ams", "--detector", "nudenet",
                "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and "NaN or infinite" in err and "\n" not in err
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.json"))[1:]   # at most the run's config


def test_identical_pairs_give_a_zero_direction_that_is_refused(tmp_path, tiny_encoder):
    pairs = tmp_path / "same.csv"
    pairs.write_text("positive,negative\na cat,a cat\na dog,a dog\n")
    with pytest.raises(AmsmoothError, match="all zeros"):
        Concept.from_pairs(tiny_encoder, pairs)


@pytest.mark.parametrize("content,match", [
    ("positive,negative\na nude woman,a woman\n,a man\n", "line 3: the 'positive' prompt of this pair is empty"),
    ("positive,negative\na nude woman,  \n", "line 2: the 'negative' prompt"),
    ('positive,negative\n"a nude woman,a woman\nnaked man,a man\nbare chest,a chest\n',
     "line 2: malformed CSV|line 2: a quoted field runs on"),
    ('positive,negative\n"a nude woman,a woman\nnaked man,a man\nbare chest",a chest\n',
     "line 2: a quoted field runs on to line 4"),
    ("positive,negative\na nude woman,a woman,extra\n", "line 2: 3 fields but the header has 2"),
])
def test_blank_pairs_and_stray_quotes_are_refused_naming_the_line(tmp_path, tiny_encoder, content, match):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(AmsmoothError, match=match):
        Concept.from_pairs(tiny_encoder, path)


def test_pairs_keep_unicode_line_separators_inside_a_prompt(tmp_path):
    from amsmooth.concepts import read_pairs

    path = tmp_path / "pairs.csv"
    path.write_text("positive,negative\na nude\u2028woman,a\u0085woman\n", encoding="utf-8")
    pos, neg, _ = read_pairs(path)
    assert (pos, neg) == (["a nude\u2028woman"], ["a\u0085woman"])


def test_pairs_csv_with_a_utf8_bom_is_read(tmp_path):
    from amsmooth.concepts import read_pairs

    path = tmp_path / "pairs.csv"
    path.write_bytes("\ufeffpositive,negative\na nude,a dressed\n".encode("utf-8"))
    assert read_pairs(path)[:2] == (["a nude"], ["a dressed"])


def test_a_concept_is_refused_for_an_encoder_with_other_layers_but_the_same_embeddings(tiny_nudity):
    import torch

    from amsmooth.models.tiny import tiny_text_encoder

    same, tuned = tiny_text_encoder(), tiny_text_encoder()
    with torch.no_grad():
        tuned.model.get_parameter("encoder.layers.0.mlp.fc1.weight").add_(0.05)
    assert torch.equal(same.embedding.weight, tuned.embedding.weight)
    assert same.fingerprint() == tiny_nudity.fingerprint != tuned.fingerprint()
    tiny_nudity.check_encoder(same)
    with pytest.raises(AmsmoothError, match="was built for"):
        tiny_nudity.check_encoder(tuned)
