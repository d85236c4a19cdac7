"""QF-PGD (after Zhuang et al., 2023, "A Pilot Study of Query-Free Adversarial Attack against Stable Diffusion").

Query-free: only the text encoder is used. K tokens are appended to the prompt (the paper: a five-character
suffix) and optimized so that the conditioning moves towards a target embedding (here h* = T(prompt) + η·Δ, or
the encoding of ``target_prompt``), by projected gradient steps in token-embedding space:

1. keep a continuous point e ∈ R^{K×D}, start at the embeddings of K random vocabulary tokens;
2. project e to the nearest real tokens (L2 in the token-embedding table, searchable vocabulary only);
3. encode the projected prompt and take the loss gradient w.r.t. the projected tokens' embeddings;
4. step e along it (Adam, step ``step_size`` × the embedding table's coordinate std) and repeat.

The gradient at the projected tokens is applied to e (straight-through projection, as in PEZ, Wen et al. 2023).
The same search drives the U-Net attacks (UnlearnDiffAtk, P4D) with their own objective.
The original attack optimizes a relaxed one-hot choice over a character table on the simplex; this is the same
projected-gradient idea on the token embeddings, which is what lets it run against any encoder's vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from .base import AttackConfig, Progress, TextAttack
from .objective import ConditioningObjective
from .vocab import Vocabulary


@dataclass(frozen=True)
class QFPGDConfig(AttackConfig):
    """QF-PGD's knobs (K = 5 appended tokens and the cosine similarity as in the paper)."""

    budget: int = 5
    iterations: int = 100             # gradient steps
    mode: str = "append"
    loss: str = "cosine"
    step_size: float = 1.0            # Adam learning rate, in units of the embedding table's coordinate std

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise AmsmoothError(f"step_size must be a finite number > 0, got {self.step_size}")


class GradientSearchConfig(Protocol):
    """What :func:`projected_gradient_search` reads from an attack's config."""

    budget: int
    iterations: int
    step_size: float


def projected_gradient_search(objective: ConditioningObjective, prefix: TokenizedBatch, vocabulary: Vocabulary,
                              config: GradientSearchConfig, generator: torch.Generator | None,
                              progress: Progress | None = None) -> tuple[list[int], list[float]]:
    """Best projected K-token suffix and the best loss after each step.

    Candidates are compared by their loss at the step's own draw, or on ``objective.evaluation`` when the
    objective fixes one (U-Net attacks: the loss at one random timestep says little about the candidate).
    """
    ids = vocabulary.sample((config.budget,), generator)
    point = vocabulary.embed(ids).clone().requires_grad_(True)              # e: [K, D]
    opt = torch.optim.Adam([point], lr=config.step_size * vocabulary.scale)
    best_ids, best, history = ids, math.inf, []
    evaluated: dict[tuple[int, ...], float] = {}   # the evaluation draw is fixed: score each candidate once
    for t in range(config.iterations):
        z = objective.draw(generator)                                      # adaptive: fresh smoothing noise
        loss, grad = objective.loss_and_grad(prefix, ids.tolist(), z)     # at the projected tokens
        if objective.evaluation is not None:
            key = tuple(ids.tolist())
            if key not in evaluated:
                evaluated[key] = float(objective.losses(prefix, [list(key)], objective.evaluation)[0])
            loss = evaluated[key]
        if loss < best:
            best, best_ids = loss, ids.clone()
        history.append(best)
        if progress is not None:
            progress(t + 1, best)
        point.grad = grad.to(point.device, point.dtype)                    # straight-through projection
        opt.step()
        ids = vocabulary.project(point)
    return best_ids.tolist(), history


class QFPGD(TextAttack):
    """QF-PGD: projected gradient steps on K appended tokens towards the target embedding."""

    name = "qf-pgd"
    config_class = QFPGDConfig
    search_fn = staticmethod(projected_gradient_search)
