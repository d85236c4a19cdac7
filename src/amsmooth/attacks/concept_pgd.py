"""concept-PGD: a word-level, concept-targeted projected-gradient attack (this project's own; formerly "qf-pgd").

Not QF-Attack (that is :mod:`amsmooth.attacks.qf`): K = 5 whole-word tokens are appended to the prompt and pulled
towards the concept target h* = T(prompt) + η·Δ (or ``target_prompt``) with Adam on the token embeddings
(projected gradient, straight-through projection as in PEZ, Wen et al. 2023; step ``step_size`` × the embedding
table's coordinate std). It is much stronger than the query-free attack at carrying a concept into the
conditioning, but it spells the concept with real words, which a blacklist can catch. It has no reference code;
its defaults are this project's.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..config import option
from .base import AttackConfig, TextAttack
from .gradient import check_gradient_settings, projected_gradient_search
from .objective import Loss
from .vocab import Mode


@dataclass(frozen=True)
class ConceptPGDConfig(AttackConfig):
    """concept-PGD's knobs (this project's defaults)."""

    tokens: int | None = 5
    iterations: int = 100             # gradient steps
    mode: Mode = "append"
    loss: Loss = "cosine"
    step_size: float = option(1.0, "Adam step × the embedding table's coordinate std")   # its learning rate
    step_units: str = "std"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    select_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_gradient_settings(self)


class ConceptPGD(TextAttack):
    """concept-PGD: projected gradient steps on K appended whole-word tokens towards the concept target."""

    name = "concept-pgd"
    config_class = ConceptPGDConfig
    quick = {"iterations": 20}
    search_fn = staticmethod(partial(projected_gradient_search, metric="l2"))
