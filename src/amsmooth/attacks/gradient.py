"""Projected gradient search over token embeddings (PEZ, Wen et al. 2023), shared by concept-PGD and P4D.

A continuous point e ∈ R^{K×D} starts at K random vocabulary tokens; each step projects e to the nearest
searchable tokens (L2 or cosine), takes the loss gradient at the projected tokens' embeddings and applies it to e
(straight-through projection) with Adam or AdamW. Every ``select_every`` steps the projected candidate is scored
— by the objective's ``selector`` if it has one (P4D: CLIP image similarity, higher is better, stored negated), by
its loss on the fixed evaluation draw if the objective fixes one, else by the step's loss — and the best scored
candidate is the result.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch

from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from .base import Progress
from .objective import ConditioningObjective
from .vocab import Vocabulary

OPTIMIZERS = ("adam", "adamw")


class GradientSearchConfig(Protocol):
    """What :func:`projected_gradient_search` reads from an attack's config."""

    tokens: int
    iterations: int
    step_size: float
    step_units: str            # "std": step_size × the embedding table's coordinate std; "raw": step_size itself
    optimizer: str
    weight_decay: float
    select_every: int


def check_gradient_settings(config: GradientSearchConfig) -> None:
    """One clear error for bad optimizer settings."""
    if not (math.isfinite(config.step_size) and config.step_size > 0):
        raise AmsmoothError(f"step_size must be a finite number > 0, got {config.step_size}")
    if config.optimizer not in OPTIMIZERS:
        raise AmsmoothError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.step_units not in ("std", "raw"):
        raise AmsmoothError(f"step_units must be 'std' or 'raw', got {config.step_units!r}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise AmsmoothError(f"weight_decay must be a finite number >= 0, got {config.weight_decay}")
    if not isinstance(config.select_every, int) or config.select_every < 1:
        raise AmsmoothError(f"select_every must be an integer >= 1, got {config.select_every}")


def searched_count(objective: ConditioningObjective, prefix: TokenizedBatch, tokens: int) -> int:
    """K for this prompt (P4D-K: one per ``every_k`` source tokens + 1)."""
    n_source = 0 if objective.layout.mode == "replace" else len(prefix.content_ids[0])
    return objective.layout.count(n_source, tokens)


def projected_gradient_search(objective: ConditioningObjective, prefix: TokenizedBatch, vocabulary: Vocabulary,
                              config: GradientSearchConfig, generator: torch.Generator | None,
                              progress: Progress | None = None, metric: str = "l2") -> tuple[list[int], list[float]]:
    """Best scored projected candidate and the best score after each step (unchanged between selections)."""
    k = searched_count(objective, prefix, config.tokens)
    ids = vocabulary.sample((k,), generator)
    point = vocabulary.embed(ids).clone().requires_grad_(True)              # e: [K, D]
    lr = config.step_size * (vocabulary.scale if config.step_units == "std" else 1.0)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt = cls([point], lr=lr, weight_decay=config.weight_decay)
    best_ids, best, history = ids, math.inf, []
    scored: dict[tuple[int, ...], float] = {}      # fixed evaluation draw / selector: score each candidate once
    selector = getattr(objective, "selector", None)
    for t in range(config.iterations):
        z = objective.draw(generator)                                      # this step's randomness
        loss, grad = objective.loss_and_grad(prefix, ids.tolist(), z)     # at the projected tokens
        if t % config.select_every == 0:
            key = tuple(ids.tolist())
            if selector is not None or objective.evaluation is not None:
                if key not in scored:
                    scored[key] = (selector(prefix, list(key)) if selector is not None else
                                   float(objective.losses(prefix, [list(key)], objective.evaluation)[0]))
                loss = scored[key]
            objective.record(key, loss)
            if loss < best:
                best, best_ids = loss, ids.clone()
        history.append(best)
        if progress is not None:
            progress(t + 1, best)
        point.grad = grad.to(point.device, point.dtype)                    # straight-through projection
        opt.step()
        ids = vocabulary.project(point, metric)
    return best_ids.tolist(), history
