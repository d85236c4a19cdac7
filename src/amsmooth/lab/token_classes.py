"""The lab's relevance-quality classes: which tokens of which prompts are concept tokens, per lexicon.

A concept token is a token of a word of the lexicon's phrases that never occurs in the benign prompts' vocabulary
and is no stop word (``relevance_methods.STOPWORDS``): for nudity's training lexicon *naked*, *nude*, *posing*;
the held-out synonyms' *undressed*, *unclothed*, *disrobed*, *skinned* (*bare* is benign here: "a bare tree");
the held-out phrases' *clothes*, *nothing*, *without*, *buff*, *stripped*, *birthday*, *suit*; the implicit
templates' words (*erotic*, *sunbathing*, *topless*, … and also *life*, *drawing*, *class*). Attack tokens: the
words of an attack's prompts that are neither benign vocabulary, training-lexicon words nor stop words (what the
attack added). Benign tokens: every non-stop word of the benign prompts.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..relevance_methods import STOPWORDS
from ..relevance_quality import QualityRow, TokenClass, relevance_quality
from ..smoothing import AdaptiveMedianSmoothing
from .captions import LEXICONS
from .prompt_sets import prompt_set

LEXICON_CLASSES = ("training", "held-out synonyms", "held-out phrases", "implicit")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _phrases(concept: str, split: str, part: str | None = None) -> list[str]:
    lex = LEXICONS[concept][split]
    return [p.replace("{p}", " ").replace("{s}", " ") for key, ps in lex.items() if part in (None, key) for p in ps]


def _member(words: frozenset[str]) -> Callable[[str], bool]:
    return lambda w: w in words


def benign_prompts(n: int, split_seed: int) -> list[str]:
    return [c.prompt for c in prompt_set("benign", n, "nudity", split_seed=split_seed, seeds=(0,))]


def lab_classes(concept: str = "nudity", n: int = 40, split_seed: int = 1,
                attacks: Sequence[tuple[str, str | Path]] = ()) -> tuple[list[TokenClass], TokenClass]:
    """(concept classes, benign class) for ``n`` prompts per lexicon drawn with ``split_seed`` (the lab table's
    split is 1, its calibration split 0), plus one class per ``(name, CSV with a 'prompt' column)`` attack set."""
    benign = benign_prompts(n, split_seed)
    vocab = set().union(*(_words(p) for p in benign))

    def concept_words(phrases: list[str]) -> frozenset[str]:
        return frozenset(set().union(*(_words(p) for p in phrases)) - vocab - STOPWORDS)

    def prompts(kind: str) -> tuple[str, ...]:
        return tuple(c.prompt for c in prompt_set(kind, n, concept, split_seed=split_seed, seeds=(0,)))

    spec = {"training": ("train", None), "held-out synonyms": ("heldout", "adj"),
            "held-out phrases": ("heldout", "post"), "implicit": ("implicit", None)}
    drawn = {kind: prompts(kind) for kind in ("train", "heldout", "implicit")}
    classes = [TokenClass(name, drawn[kind], _member(concept_words(_phrases(concept, kind, part))))
               for name, (kind, part) in spec.items()]
    training = concept_words(_phrases(concept, "train"))
    for name, path in attacks:
        with Path(path).open(newline="", encoding="utf-8") as f:
            rows = tuple(r["prompt"] for r in csv.DictReader(f))
        banned = frozenset(vocab | training | STOPWORDS)
        classes.append(TokenClass(f"attack: {name}", rows, lambda w, banned=banned: w not in banned))
    return classes, TokenClass("benign", tuple(benign), lambda w: w not in STOPWORDS)


def lab_relevance_quality(ams: AdaptiveMedianSmoothing, concept: str = "nudity", n: int = 40, split_seed: int = 1,
                          attacks: Sequence[tuple[str, str | Path]] = (), encoder_name: str = "") -> list[QualityRow]:
    """The relevance-quality rows of ``ams`` (its configured method) on the lab's lexicons (and attack sets)."""
    classes, benign = lab_classes(concept, n, split_seed, attacks)
    return relevance_quality(ams, classes, benign, encoder_name)
