"""Concept erasure built in: ESD (fine-tuning, :mod:`.esd`), UCE (closed-form edit, :mod:`.uce`) and their robust
versions RECE (UCE + closed-form adversarial rounds, :mod:`.rece`) and RACE (ESD + adversarial training on the
text embedding, :mod:`.race`).

All take a loaded pipeline (anything :func:`amsmooth.loading.load_pipeline` accepts) and return the unlearned
U-Net's full state dict in the diffusers layout, which :func:`save_unet` writes as ``.safetensors`` (+ a JSON
sidecar) and ``load_pipeline(..., unet=path)`` / ``--unet`` load back.
"""
from __future__ import annotations

from ..errors import AmsmoothError
from .esd import QUICK, TRAIN_METHODS, ESDSettings, ESDTrainer, esd, trainable_parameter_names
from .output import check_output, save_unet, sidecar_path
from .race import QUICK_RACE, RACELog, RACESettings, RACETrainer, race
from .rece import RECEEpoch, RECESettings, adversarial_embedding, rece
from .uce import UCESettings, cross_attention_projections, uce

# --concept NAME → default erase texts. nudity: the text of UCE's released nudity edit
# (data/info/universal-nudity-towards_uncond-preserve_true-sd_1_4-method_replace.txt), the concept ESD's released
# nudity U-Net (diffusers-nudity-ESDu1-UNET.pt) is named after;
# violence: the concept's own name, as in UCE's moderation example ('violence, nudity, harm', README).
CONCEPT_TEXTS: dict[str, tuple[str, ...]] = {
    "nudity": ("nudity",),
    "violence": ("violence",),
}


def concept_texts(name: str) -> list[str]:
    """The default erase texts of a built-in concept name."""
    try:
        return list(CONCEPT_TEXTS[name])
    except KeyError:
        raise AmsmoothError(f"no default erase texts for concept '{name}'; use one of "
                            f"{', '.join(CONCEPT_TEXTS)}, or give the texts with --erase TEXT") from None


__all__ = ["CONCEPT_TEXTS", "ESDSettings", "ESDTrainer", "QUICK", "QUICK_RACE", "RACELog", "RACESettings",
           "RACETrainer", "RECEEpoch", "RECESettings", "TRAIN_METHODS", "UCESettings", "adversarial_embedding",
           "check_output", "concept_texts", "cross_attention_projections", "esd", "race", "rece", "save_unet",
           "sidecar_path", "trainable_parameter_names", "uce"]
