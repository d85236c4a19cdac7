"""The U-Net attacks: UnlearnDiffAtk (``uda``, Zhang et al., 2024) and P4D (``p4d``, Chin et al., 2024).

Both search K real vocabulary tokens by projected gradient steps in token-embedding space (the QF-PGD search,
:func:`~amsmooth.attacks.qf_pgd.projected_gradient_search`), with the gradient taken through the *attacked*
(unlearned) U-Net's noise prediction (:class:`~amsmooth.attacks.denoising.DenoisingObjective`):

- ``uda``: K = 5 tokens *prepended* to the prompt; ε_θ(x_t, t, c(adv)) should match the true noise ε of a noised
  target image, so the unlearned model reconstructs the image the original model makes of the prompt;
- ``p4d`` (P4D-N): K = 16 tokens *replacing* the prompt; ε_θ(x_t, t, c(adv)) should match the original U-Net's
  prediction ε_orig(x_t, t, c(source)) on the same noisy latent.

The text encoder is the pipeline's own; ``--adaptive`` routes the conditioning through AMS (EOT draws,
straight-through median) exactly as for the text attacks.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..concepts import Concept
from ..encoders import TextEncoder
from ..errors import AmsmoothError
from ..prompts import PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .base import SearchConfig, TextAttack
from .denoising import DenoisingObjective, Reference, unet_forward
from .objective import ConditioningObjective
from .qf_pgd import projected_gradient_search
from .targets import TargetLatents
from .vocab import Vocabulary


@dataclass(frozen=True)
class UNetAttackConfig(SearchConfig):
    """UnlearnDiffAtk's knobs (K = 5 prepended tokens); P4D's config changes the defaults."""

    budget: int = 5
    iterations: int = 40              # gradient steps
    mode: str = "prepend"
    step_size: float = 1.0            # Adam learning rate, in units of the embedding table's coordinate std
    timesteps_per_step: int = 1       # S: (t, ε) pairs drawn per gradient step
    eval_timesteps: int = 4           # fixed (t, ε) pairs on which candidates are compared and the result scored
    target_steps: int = 50            # denoising steps of the generated target image
    height: int | None = None         # image size in pixels (None: the pipeline's default)
    width: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise AmsmoothError(f"step_size must be a finite number > 0, got {self.step_size}")
        for name in ("timesteps_per_step", "eval_timesteps", "target_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AmsmoothError(f"{name} must be an integer >= 1, got {value}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise AmsmoothError(f"{name} must be a positive multiple of 8, got {value}")


@dataclass(frozen=True)
class P4DConfig(UNetAttackConfig):
    """P4D-N: K = 16 tokens replacing the prompt."""

    budget: int = 16
    iterations: int = 100
    mode: str = "replace"


def module_fingerprint(module: torch.nn.Module) -> str:
    """A cheap identity of a module's weights: hash of every parameter's name, shape and sum (any device)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


@dataclass
class DiffusionModels:
    """The attacked model: its pipeline (VAE, scheduler, text encoder), the attacked U-Net, the original one.

    ``pipe.unet`` is the original U-Net when it is kept (P4D's reference, generated target images), else the
    attacked one. Without a replacement U-Net, ``unet``, ``original`` and ``pipe.unet`` are one module.
    """

    pipe: Any
    unet: torch.nn.Module
    original: torch.nn.Module | None
    encoder: TextEncoder
    source: dict[str, Any] = field(default_factory=dict)     # where the weights came from (model, unet)

    @classmethod
    def of(cls, pipe: Any, unet: torch.nn.Module | None = None,
           source: dict[str, Any] | None = None) -> "DiffusionModels":
        """From a loaded pipeline (its U-Net is the original) and the attacked U-Net (default: the original)."""
        encoder = TextEncoder(pipe.text_encoder, pipe.tokenizer, name=type(pipe.text_encoder).__name__)
        return cls(pipe, pipe.unet if unet is None else unet, pipe.unet, encoder, dict(source or {}))

    @classmethod
    def load(cls, model: str, unet: str | None = None, keep_original: bool = True,
             device: str | torch.device = "cpu") -> "DiffusionModels":
        """Load ``model`` (id, folder or "tiny") and the unlearned U-Net at ``unet`` as ``amsmooth generate`` does;
        the original U-Net is kept as a second module only when ``keep_original``."""
        from ..loading import load_pipeline, load_unet_weights

        source = {"model": model, "unet": unet}
        if unet is None:
            return cls.of(load_pipeline(model, device=device), source=source)
        if not keep_original:
            return replace(cls.of(load_pipeline(model, unet=unet, device=device), source=source), original=None)
        pipe = load_pipeline(model, device=device)
        attacked = copy.deepcopy(pipe.unet)
        load_unet_weights(attacked, unet)
        return cls.of(pipe, attacked.eval().requires_grad_(False), source)

    def describe(self) -> dict[str, Any]:
        """Sources and weight fingerprints, for the settings of the output rows."""
        return {**self.source, "unet_fingerprint": module_fingerprint(self.unet),
                "original_fingerprint": None if self.original is None else module_fingerprint(self.original)}

    def default_size(self) -> int:
        """The pipeline's default image size in pixels (SD-1.x: 512; the tiny pipeline: 64)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)


class UnlearnDiffAtk(TextAttack):
    """UnlearnDiffAtk: K prepended tokens so that the attacked U-Net denoises towards the target image (ε-match)."""

    name = "uda"
    config_class = UNetAttackConfig
    needs_original = False                 # P4D's reference is the original U-Net

    def __init__(self, models: DiffusionModels, concept: Concept, config: UNetAttackConfig | None = None,
                 smoothing: AdaptiveMedianSmoothing | None = None, vocabulary: Vocabulary | None = None,
                 target_images: str | Path | None = None) -> None:
        super().__init__(models.encoder, concept, config, smoothing, vocabulary)
        self.models = models
        size = models.default_size()
        self.config = replace(self.config, height=self.config.height or size, width=self.config.width or size)
        if models.original is None and (self.needs_original or target_images is None):
            why = "P4D's reference prediction" if self.needs_original else "generating the target images"
            raise AmsmoothError(f"'{self.name}': {why} needs the original U-Net, which was not kept")
        self.targets = TargetLatents(models.pipe, self.config.height, self.config.width, target_images,
                                     self.config.target_steps)
        for m in {id(models.unet): models.unet, id(models.original): models.original}.values():
            if m is not None:
                m.requires_grad_(False)

    def reference(self, prompt: str) -> Reference | None:
        """What the attacked U-Net's prediction should match, besides ε (None: the true noise ε)."""
        return None

    def case_objective(self, case: PromptCase) -> ConditioningObjective:
        return DenoisingObjective(self.encoder, self.models.unet, self.models.pipe.scheduler, self.targets(case),
                                  self.reference(case.prompt), self.config.timesteps_per_step,
                                  self.config.eval_timesteps, self.smoothing, self.config.eot_samples,
                                  prepend=self.prepend)

    def settings(self) -> dict[str, Any]:
        folder = self.targets.folder
        return {"models": self.models.describe(), "target_images": None if folder is None else str(folder)}

    search_fn = staticmethod(projected_gradient_search)


class P4D(UnlearnDiffAtk):
    """P4D-N: K tokens so that the attacked U-Net predicts what the original predicts for the source prompt."""

    name = "p4d"
    config_class = P4DConfig
    needs_original = True

    def reference(self, prompt: str) -> Reference:
        """ε_orig(x_t, t, c(source prompt)), plain conditioning, no gradient: ``[S, C, h, w]``."""
        original = self.models.original
        cond = self.encoder.encode([prompt])                                   # [1, L, D]

        def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet_forward(original, x_t, t, cond.expand(t.shape[0], -1, -1).to(x_t.device))
        return predict
