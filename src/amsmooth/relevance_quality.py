"""How well a relevance method tells concept tokens from benign ones: token-level AUROC and the noise multiplier.

For each class of concept tokens (e.g. a lexicon: training words, held-out synonyms, implicit phrasings, attack
tokens) :func:`relevance_quality` scores the prompts that carry them with the smoothing's configured method and
reports one :class:`QualityRow`: the AUROC of the tokens' scores against the benign tokens' scores (the
probability that a concept token scores above a benign one, ties counting half) and the noise multiplier
σ_j/σ0 = e^{k·sim_j} the class actually receives (mean and max), beside the benign tokens' own.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from .errors import AmsmoothError
from .smoothing import AdaptiveMedianSmoothing

WordFilter = Callable[[str], bool]


@dataclass(frozen=True)
class TokenClass:
    """Prompts and which of their words belong to the class (by the word's normalised text)."""

    name: str
    prompts: tuple[str, ...]
    keep: WordFilter


@dataclass(frozen=True)
class QualityRow:
    """One class of one method on one encoder: token count, AUROC against benign tokens, and the multiplier
    e^{k·sim} (σ/σ0) the class's tokens receive (mean, max) beside the benign tokens' (mean, max)."""

    method: str
    encoder: str
    lexicon: str
    tokens: int
    benign_tokens: int
    auroc: float
    mult_mean: float
    mult_max: float
    benign_mult_mean: float
    benign_mult_max: float

    def as_dict(self) -> dict:
        return asdict(self)


def auroc(positive: Sequence[float] | torch.Tensor, negative: Sequence[float] | torch.Tensor) -> float:
    """P(score of a positive > score of a negative) + ½ P(equal): the Mann–Whitney AUROC. Exact, ``O(P·N)``."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise AmsmoothError(f"AUROC needs both classes ({pos.numel()} positive, {neg.numel()} negative scores)")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    equal = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * equal)


def normalise(word: str) -> str:
    """A word as the classes match it: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", word.lower())


def token_scores(ams: AdaptiveMedianSmoothing, prompts: Sequence[str], keep: WordFilter,
                 chunk: int = 32) -> torch.Tensor:
    """``[T, 2]``: (sim, σ/σ0) of every prompt token whose word (normalised) passes ``keep``."""
    rows: list[tuple[float, float]] = []
    for s in range(0, len(prompts), chunk):
        batch = ams.encoder.tokenize(list(prompts[s:s + chunk]))
        with torch.no_grad():
            rel = ams.scores(batch)
        for b in range(len(batch)):
            for positions in batch.words(b):
                word = normalise(ams.encoder.word_text(batch.input_ids[b, positions].tolist()))
                if word and keep(word):
                    rows += [(float(rel.sim[b, p]), math.exp(ams.config.k * float(rel.sim[b, p])))
                             for p in positions]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)


def relevance_quality(ams: AdaptiveMedianSmoothing, classes: Sequence[TokenClass], benign: TokenClass,
                      encoder_name: str = "") -> list[QualityRow]:
    """One row per class: AUROC of its tokens' scores against ``benign``'s, and the multipliers each receives."""
    neg = token_scores(ams, benign.prompts, benign.keep)
    if neg.shape[0] == 0:
        raise AmsmoothError(f"no benign token selected from {len(benign.prompts)} prompts")
    out = []
    for cls in classes:
        pos = token_scores(ams, cls.prompts, cls.keep)
        if pos.shape[0] == 0:
            raise AmsmoothError(f"class {cls.name!r}: no token selected from {len(cls.prompts)} prompts")
        out.append(QualityRow(ams.config.relevance, encoder_name or ams.encoder.name, cls.name, int(pos.shape[0]),
                              int(neg.shape[0]), auroc(pos[:, 0], neg[:, 0]), float(pos[:, 1].mean()),
                              float(pos[:, 1].max()), float(neg[:, 1].mean()), float(neg[:, 1].max())))
    return out


def format_rows(rows: Sequence[QualityRow]) -> str:
    """The rows as a Markdown table."""
    lines = ["| encoder | method | lexicon | tokens | AUROC vs benign | e^{k·sim} mean | max | benign mean | "
             "benign max |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.encoder} | {r.method} | {r.lexicon} | {r.tokens} | {r.auroc:.3f} | {r.mult_mean:.2f} | "
              f"{r.mult_max:.2f} | {r.benign_mult_mean:.2f} | {r.benign_mult_max:.2f} |" for r in rows]
    return "\n".join(lines)


def classes_from_words(prompts: Mapping[str, Sequence[str]], words: Mapping[str, set[str]]) -> list[TokenClass]:
    """A class per name: its prompts and the tokens of the words in ``words[name]``."""
    return [TokenClass(name, tuple(prompts[name]), lambda w, ws=frozenset(words[name]): w in ws) for name in prompts]
