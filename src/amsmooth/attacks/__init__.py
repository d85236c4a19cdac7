"""Adversarial prompt attacks on concept-erased diffusion models, plain and adaptive against AMS.

Text-encoder attacks (need only the text encoder): Ring-A-Bell (``rab``) and QF-PGD (``qf-pgd``). U-Net attacks
(need the diffusion model, ``--model`` and the unlearned ``--unet``): UnlearnDiffAtk (``uda``) matches the
unlearned U-Net's noise prediction to the true noise of a target image; P4D (``p4d``) matches it to the original
U-Net's prediction for the source prompt. All search real vocabulary tokens; ``--adaptive`` optimizes through the
smoothing (EOT over the n noisy encodings, straight-through median).
"""
from __future__ import annotations

from ..errors import AmsmoothError
from .base import AttackConfig, AttackResult, SearchConfig, TextAttack
from .denoising import DenoisingObjective, UNetDraw
from .objective import ConditioningObjective, TextObjective, concept_target, straight_through_median
from .qf_pgd import QFPGD, QFPGDConfig
from .ring_a_bell import RingABell, RingABellConfig
from .unet import P4D, DiffusionModels, P4DConfig, UNetAttackConfig, UnlearnDiffAtk
from .vocab import Vocabulary

TEXT_ATTACKS: dict[str, type[TextAttack]] = {"rab": RingABell, "qf-pgd": QFPGD}
UNET_ATTACKS: dict[str, type[UnlearnDiffAtk]] = {"uda": UnlearnDiffAtk, "p4d": P4D}
ATTACKS: dict[str, type[TextAttack]] = {**TEXT_ATTACKS, **UNET_ATTACKS}


def attack_class(name: str) -> type[TextAttack]:
    """The attack registered under ``name``; one clear error for unknown attacks."""
    if name in ATTACKS:
        return ATTACKS[name]
    raise AmsmoothError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


__all__ = ["ATTACKS", "AttackConfig", "AttackResult", "ConditioningObjective", "DenoisingObjective",
           "DiffusionModels", "P4D", "P4DConfig", "QFPGD", "QFPGDConfig", "RingABell", "RingABellConfig",
           "SearchConfig", "TEXT_ATTACKS", "TextAttack", "TextObjective", "UNET_ATTACKS", "UNetAttackConfig",
           "UNetDraw", "UnlearnDiffAtk", "Vocabulary", "attack_class", "concept_target", "straight_through_median"]
