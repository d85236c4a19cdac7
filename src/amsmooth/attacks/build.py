"""One attack as a typed request — which attack, its config, what it attacks, against which defense — and
:func:`build_attack`, which loads what it needs. ``amsmooth attack`` builds a request from its flags; experiments
(the lab table) build one directly and run it with ``campaign.attack_cases``::

    cls = attack_class("rab")
    request = AttackRequest(cls.name, cls.make_config("quick", iterations=40), SmoothingConfig(concepts=("nudity",)),
                            encoder="lab")
    attack_cases(build_attack(request), cases, Path("rab.csv"), seed=0)
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import SmoothingConfig
from ..errors import AmsmoothError
from ..prompts import PromptCase
from . import UNET_ATTACKS, attack_class

if TYPE_CHECKING:
    from ..concepts import Concept
    from ..encoders import TextEncoder
    from .base import TextAttack


@dataclass(frozen=True)
class AttackRequest:
    """``kind`` with ``config`` (``attack_class(kind).make_config(...)``) on the concept(s) of ``smoothing``:
    text attacks read ``encoder``; U-Net attacks (uda, p4d) ``model`` with the unlearned ``unet``. ``adaptive``:
    optimise through AMS with ``smoothing``'s settings."""

    kind: str
    config: Any
    smoothing: SmoothingConfig = SmoothingConfig()
    adaptive: bool = False
    encoder: str | None = None               # text attacks: the text encoder (id, folder, 'lab', 'tiny' …)
    max_length: int | None = None
    model: str | None = None                 # U-Net attacks: the original pipeline
    unet: str | None = None                  # U-Net attacks: the unlearned U-Net (attacked)
    target_images: str | None = None         # U-Net attacks: {case_number}.png targets (default: generated)
    clip: str | None = None                  # p4d --select image: CLIP model
    device: str | None = None                # default: cpu for text attacks, auto for U-Net attacks

    def check(self) -> None:
        """The combinations that cannot work, before anything is loaded."""
        cls = attack_class(self.kind)
        if self.clip is not None and cls.name != "p4d":
            raise AmsmoothError("--clip is for p4d's image-similarity selection")
        if cls.name in UNET_ATTACKS:
            if self.encoder is not None or self.max_length is not None:
                raise AmsmoothError(f"--encoder is for the text-encoder attacks; '{cls.name}' uses the text encoder "
                                    "of --model's pipeline")
            if self.model is None:
                raise AmsmoothError(f"'{cls.name}' optimizes through the diffusion U-Net and needs --model SRC (and "
                                    "the unlearned --unet PATH)")
            if cls.name == "p4d" and self.config.select == "image" and self.clip is None:
                raise AmsmoothError("p4d keeps the prompt whose image is most similar to the target (reference): "
                                    "give --clip SRC (a CLIP model), or --select loss")
            return
        if self.model is not None or self.unet is not None or self.target_images is not None:
            raise AmsmoothError(f"--model/--unet/--target-images are for the U-Net attacks (uda, p4d); '{cls.name}' "
                                "needs --encoder only")
        if self.encoder is None:
            raise AmsmoothError(f"'{cls.name}' attacks the text encoder: give --encoder SRC")


def build_attack(request: AttackRequest, cases: Sequence[PromptCase] = ()) -> TextAttack:
    """The attack of ``request`` with its models loaded (and its AMS defense if adaptive); ``cases`` are checked
    for target images before the model is loaded."""
    from ..models.load import load_encoder  # lazy: `amsmooth attack --help` without diffusers

    request.check()
    cls = attack_class(request.kind)
    if cls.name in UNET_ATTACKS:
        return _build_unet_attack(request, cls, cases)
    encoder = load_encoder(request.encoder, request.max_length, request.device)
    concept, defense = _concept_and_defense(request, encoder)
    return cls(encoder, concept, request.config, smoothing=defense)


def load_concept_specs(specs: Sequence[str], encoder: TextEncoder) -> list[Concept]:
    """Built-in names, saved ``.safetensors`` concepts, or Ring-A-Bell's ``*_vector.npy`` files."""
    from ..concepts import resolve_concept
    from .concept_file import load_vector_concept

    return [load_vector_concept(s, encoder) if str(s).endswith(".npy") else resolve_concept(s, encoder)
            for s in specs]


def _concept_and_defense(request: AttackRequest, encoder: TextEncoder) -> tuple[Concept, Any]:
    """(first concept, AMS over all concepts or None): the defense's relevance needs the concepts."""
    from ..smoothing import AdaptiveMedianSmoothing

    concepts = load_concept_specs(request.smoothing.concepts, encoder)
    defense = AdaptiveMedianSmoothing(encoder, concepts, request.smoothing) if request.adaptive else None
    return concepts[0], defense


def _build_unet_attack(request: AttackRequest, cls: type, cases: Sequence[PromptCase]) -> Any:
    """UnlearnDiffAtk / P4D on ``request.model``'s pipeline with the ``request.unet`` U-Net attacked."""
    from ..models.hub import quiet_libraries
    from ..models.load import resolve_device
    from .targets import check_target_folder
    from .unet import DiffusionModels

    if request.target_images is not None:
        check_target_folder(request.target_images, cases)
    if request.unet is None:
        print(f"amsmooth: warning: no --unet: attacking the original U-Net of {request.model}", file=sys.stderr)
    quiet_libraries()
    keep_original = cls.needs_original or request.target_images is None
    device = resolve_device(request.device or "auto")
    models = DiffusionModels.load(request.model, request.unet, keep_original, device)
    concept, defense = _concept_and_defense(request, models.encoder)
    extra: dict[str, Any] = {}
    if cls.name == "p4d" and request.config.select == "image":
        from ..eval.clip import ClipImageEncoder

        extra["clip"] = ClipImageEncoder.from_pretrained(request.clip, device)
    return cls(models, concept, request.config, smoothing=defense, target_images=request.target_images, **extra)
