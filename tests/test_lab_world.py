"""The lab's world: renderer ↔ reader agreement (≥ 99 %), lexicon splits, prompt sets."""
from __future__ import annotations

import random

import numpy as np
import pytest

from amsmooth.errors import AmsmoothError
from amsmooth.lab import captions as C
from amsmooth.lab import readout as D
from amsmooth.lab import world as W
from amsmooth.lab.prompt_sets import prompt_set, read_truth, write_csv


def _scenes(n: int, seed: int) -> list[W.Scene]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        s = C.sample_scene(rng, nude=u < 0.25, violent=0.25 <= u < 0.45)
        out.append(W.with_changes(s, long_hair=rng.random() < 0.5))
    return out


def test_render_is_deterministic_and_concepts_change_pixels() -> None:
    s = W.Scene(subject="person", scene="beach", colour="red", garment="coat")
    assert np.array_equal(W.render(s), W.render(s))
    assert W.render(s).shape == (32, 32, 3) and W.render(s).dtype == np.uint8
    assert (W.render(W.with_changes(s, nude=True)) != W.render(s)).any(axis=-1).sum() > 60
    assert (W.render(W.with_changes(s, violent=True)) != W.render(s)).any(axis=-1).sum() > 40


@pytest.mark.slow   # 48 s: every reader over rendered scenes; the readers' unit tests stay in the default suite
def test_readers_agree_with_the_renderer() -> None:
    scenes = _scenes(1200, seed=7)
    agree: dict[str, list[bool]] = {}
    for s in scenes:
        r = D.read(W.render(s))
        checks = {"scene": r.scene == s.scene, "subject": r.subject == s.subject, "nudity": r.nude == s.nude,
                  "violence": r.violent == s.violent, "object": (r.obj, r.obj_colour) == (s.obj, s.obj_colour)}
        if s.subject == "car" or (s.subject == "person" and not s.nude):
            checks["colour"] = r.colour == s.colour
        if s.subject == "tree":
            checks["leafless"] = r.leafless == s.leafless
        for k, v in checks.items():
            agree.setdefault(k, []).append(v)
    rates = {k: float(np.mean(v)) for k, v in agree.items()}
    assert min(rates.values()) >= 0.99, rates
    assert sum(s.nude for s in scenes) > 100 and sum(s.violent for s in scenes) > 100


def test_lab_detector_interface() -> None:
    det = D.LabDetector("nudity")
    nude = W.render(W.Scene(nude=True)), W.render(W.Scene())
    flags = [d.flagged for d in det.detect(list(nude))]
    assert flags == [True, False]
    assert D.LabDetector("violence").detect([W.render(W.Scene(violent=True))])[0].flagged


def test_lexicons_are_disjoint_and_training_uses_only_train_words() -> None:
    for lex in C.LEXICONS.values():
        train = set(lex["train"]["adj"] + lex["train"]["post"])
        held = set(lex["heldout"]["adj"] + lex["heldout"]["post"])
        assert not train & held
    texts = " | ".join(c.text for c in C.training_captions(3000, 0))
    for word in ("undressed", "unclothed", "in the buff", "gory", "mutilated", "naked tree", "blood-red"):
        assert word not in texts
    assert "naked" in texts and "bloody" in texts


def test_lookalikes_show_no_concept() -> None:
    rng = random.Random(0)
    for concept in W.CONCEPTS:
        for _ in range(30):
            c = C.lookalike(rng, concept)
            assert not c.scene.nude and not c.scene.violent


def test_prompt_sets_are_disjoint_across_splits_and_roundtrip(tmp_path) -> None:
    cal = prompt_set("heldout", 10, "nudity", split_seed=0, seeds=(0,))
    table = prompt_set("heldout", 10, "nudity", split_seed=1, seeds=(0, 1, 2),
                       exclude=[c.prompt for c in cal])
    assert not {c.prompt for c in cal} & {c.prompt for c in table}
    assert len(table) == 30 and all(c.concept == "nudity" and c.caption.scene.nude for c in table)
    truth = read_truth(write_csv(table, tmp_path / "heldout.csv"))
    assert truth["3-2"][0] == table[11].caption.scene
    with pytest.raises(AmsmoothError):
        prompt_set("nonsense", 3)
