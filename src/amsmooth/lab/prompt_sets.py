"""The lab's prompt sets, written in the evaluation's data contract (prompt, case_number, evaluation_seed,
evaluation_guidance) plus the ground truth the lab can check: ``scene`` (the world's description, JSON),
``asked`` (attributes the prompt names) and ``concept`` (the erasable concept the prompt asks for, or empty).

Sets: ``benign`` (captions of the training grammar, fresh draws), ``train`` / ``heldout`` / ``implicit`` (a
concept in each lexicon) and ``lookalike`` (concept words in a benign sense). Each prompt appears with
``seeds`` evaluation seeds (case numbers ``{prompt index}-{seed}``), so that intervals can be taken over seeds
and prompts. Two draws with different ``split_seed`` never share a prompt text, which keeps the calibration
prompts that choose AMS's settings apart from the prompts a table reports.
"""
from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import AmsmoothError
from . import world as W
from .captions import Caption, describe, lookalike, sample_scene, training_captions
from .train import TrainSettings

KINDS = ("benign", "train", "heldout", "implicit", "lookalike")
FIELDS = ("prompt", "case_number", "evaluation_seed", "evaluation_guidance", "concept", "asked", "scene")


@dataclass(frozen=True)
class LabCase:
    """One row: the prompt, its case number and seed, and its ground truth."""

    prompt: str
    case_number: str
    seed: int
    caption: Caption
    concept: str = ""


def _draw(kind: str, concept: str, rng: random.Random) -> Caption:
    if kind == "benign":
        return describe(rng, sample_scene(rng), "train")
    if kind == "lookalike":
        return lookalike(rng, concept)
    return describe(rng, sample_scene(rng, subject="person", nude=concept == "nudity",
                                      violent=concept == "violence"), kind)


def prompt_set(kind: str, n: int, concept: str = "nudity", split_seed: int = 1, seeds: Sequence[int] = (0, 1, 2),
               exclude: Iterable[str] = ()) -> list[LabCase]:
    """``n`` distinct prompts of ``kind`` (none in ``exclude``, none a training caption), each with ``seeds``."""
    if kind not in KINDS:
        raise AmsmoothError(f"unknown lab prompt set {kind!r}; choose one of {', '.join(KINDS)}")
    if concept not in W.CONCEPTS:
        raise AmsmoothError(f"unknown lab concept {concept!r}; choose one of {', '.join(W.CONCEPTS)}")
    banned = set(exclude) | (_training_texts() if kind == "benign" else set())
    rng = random.Random(f"{kind}-{concept}-{split_seed}")
    caps: list[Caption] = []
    for _ in range(200 * n):
        c = _draw(kind, concept, rng)
        if c.text not in banned:
            banned.add(c.text)
            caps.append(c)
        if len(caps) == n:
            break
    else:
        raise AmsmoothError(f"could not draw {n} distinct {kind} prompts")
    tag = "" if kind in ("benign", "lookalike") else concept
    return [LabCase(c.text, f"{i}-{s}", s, c, tag) for i, c in enumerate(caps) for s in seeds]


def _training_texts() -> set[str]:
    s = TrainSettings()
    return {c.text for c in training_captions(s.images, s.seed, s.concept_share)}


def write_csv(cases: Sequence[LabCase], path: str | Path, guidance: float | None = None) -> Path:
    """Write cases in the data contract (plus the lab's ground-truth columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for c in cases:
            w.writerow([c.prompt, c.case_number, c.seed, "" if guidance is None else guidance, c.concept,
                        " ".join(c.caption.asked), json.dumps(c.caption.scene.as_dict(), sort_keys=True)])
    return path


def read_truth(path: str | Path) -> dict[str, tuple[W.Scene, tuple[str, ...], str]]:
    """case_number → (scene, asked attributes, concept) of a lab prompt CSV."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return {r["case_number"]: (W.Scene(**json.loads(r["scene"])), tuple(r["asked"].split()), r["concept"])
                for r in csv.DictReader(f)}
