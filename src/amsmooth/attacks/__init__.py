"""Adversarial prompt attacks on concept-erased diffusion models, plain and adaptive against AMS.

Text-encoder attacks (need only the text encoder): Ring-A-Bell (``rab``), QF-Attack (``qf``), MMA-Diffusion's text
attack (``mma``) and this project's word-level concept-targeted PGD (``concept-pgd``). U-Net attacks (need the
diffusion model, ``--model`` and the unlearned ``--unet``): UnlearnDiffAtk (``uda``) and P4D-N / P4D-K (``p4d``).
Defaults follow each reference implementation (``docs/attacks.md`` has the table); ``budget="quick"`` is a
labelled cheap setting. ``--adaptive`` optimizes through the smoothing (EOT over the n noisy encodings,
straight-through median, the noise from its own stream).
"""
from __future__ import annotations

from ..errors import AmsmoothError
from .base import AttackConfig, AttackResult, SearchConfig, TextAttack, noise_generator
from .concept_pgd import ConceptPGD, ConceptPGDConfig
from .denoising import DenoisingObjective, UNetDraw
from .mma import MMAConfig, MMADiffusion
from .objective import ConditioningObjective, TextObjective, concept_target, straight_through_median
from .p4d import P4D, P4DConfig
from .qf import QFAttack, QFConfig
from .ring_a_bell import RingABell, RingABellConfig
from .uda import UDAConfig, UnlearnDiffAtk
from .unet import DiffusionModels, UNetAttack, UNetAttackConfig
from .vocab import Layout, Vocabulary

TEXT_ATTACKS: dict[str, type[TextAttack]] = {"rab": RingABell, "qf": QFAttack, "mma": MMADiffusion,
                                             "concept-pgd": ConceptPGD}
UNET_ATTACKS: dict[str, type[UNetAttack]] = {"uda": UnlearnDiffAtk, "p4d": P4D}
ATTACKS: dict[str, type[TextAttack]] = {**TEXT_ATTACKS, **UNET_ATTACKS}
RENAMED = {"qf-pgd": "'qf-pgd' was renamed: 'qf' is QF-Attack as published (its PGD search, QF-PGD, is the "
                     "default); the former word-level concept-targeted attack is 'concept-pgd'"}


def attack_class(name: str) -> type[TextAttack]:
    """The attack registered under ``name``; one clear error for unknown attacks."""
    if name in ATTACKS:
        return ATTACKS[name]
    if name in RENAMED:
        raise AmsmoothError(RENAMED[name])
    raise AmsmoothError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


__all__ = ["ATTACKS", "AttackConfig", "AttackResult", "ConceptPGD", "ConceptPGDConfig", "ConditioningObjective",
           "DenoisingObjective", "DiffusionModels", "Layout", "MMAConfig", "MMADiffusion", "P4D", "P4DConfig",
           "QFAttack", "QFConfig", "RingABell", "RingABellConfig", "SearchConfig", "TEXT_ATTACKS", "TextAttack",
           "TextObjective", "UDAConfig", "UNET_ATTACKS", "UNetAttack", "UNetAttackConfig", "UNetDraw",
           "UnlearnDiffAtk", "Vocabulary", "attack_class", "concept_target", "noise_generator",
           "straight_through_median"]
