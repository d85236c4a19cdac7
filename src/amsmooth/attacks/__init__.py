"""Adversarial prompt attacks on concept-erased diffusion models, plain and adaptive against AMS.

Text-encoder attacks (need only the text encoder): Ring-A-Bell (``rab``) and QF-PGD (``qf-pgd``). U-Net attacks
(UnlearnDiffAtk ``uda``, P4D ``p4d``) optimize through the diffusion model and come with the generation wrapper.
"""
from __future__ import annotations

from ..errors import AmsmoothError
from .base import AttackConfig, AttackResult, TextAttack
from .objective import TextObjective, concept_target, straight_through_median
from .qf_pgd import QFPGD, QFPGDConfig
from .ring_a_bell import RingABell, RingABellConfig
from .vocab import Vocabulary

ATTACKS: dict[str, type[TextAttack]] = {"rab": RingABell, "qf-pgd": QFPGD}
UNET_ATTACKS = {"uda": "UnlearnDiffAtk (Zhang et al., 2024)", "p4d": "P4D (Chin et al., 2024)"}


def attack_class(name: str) -> type[TextAttack]:
    """The attack registered under ``name``; one clear error for unknown or not-yet-available attacks."""
    if name in ATTACKS:
        return ATTACKS[name]
    if name in UNET_ATTACKS:
        raise AmsmoothError(f"attack '{name}' ({UNET_ATTACKS[name]}) optimizes through the diffusion U-Net and "
                            "needs --model SRC; it is not available in this version yet (text-encoder attacks: "
                            f"{', '.join(ATTACKS)})")
    raise AmsmoothError(f"unknown attack {name!r}; known: {', '.join([*ATTACKS, *UNET_ATTACKS])}")


__all__ = ["ATTACKS", "AttackConfig", "AttackResult", "QFPGD", "QFPGDConfig", "RingABell", "RingABellConfig",
           "TextAttack", "TextObjective", "UNET_ATTACKS", "Vocabulary", "attack_class", "concept_target",
           "straight_through_median"]
