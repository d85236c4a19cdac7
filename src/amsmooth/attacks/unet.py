"""What the U-Net attacks share: the attacked diffusion model (:class:`DiffusionModels`: pipeline, unlearned U-Net,
original U-Net), the target images, and the attack skeleton :class:`UNetAttack` whose objective is the attacked
U-Net's noise-prediction error (:class:`~amsmooth.attacks.denoising.DenoisingObjective`). UnlearnDiffAtk lives in
:mod:`amsmooth.attacks.uda`, P4D in :mod:`amsmooth.attacks.p4d`.

The text encoder is the pipeline's own; ``--adaptive`` routes the conditioning through AMS (EOT draws,
straight-through median) exactly as for the text attacks.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..concepts import Concept
from ..config import option
from ..encoders import TextEncoder
from ..errors import AmsmoothError
from ..prompts import GenerationSettings, PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .base import SearchConfig, TextAttack
from .denoising import DenoisingObjective, Reference
from .targets import TargetLatents
from .vocab import Mode, Vocabulary


@dataclass(frozen=True)
class UNetAttackConfig(SearchConfig):
    """What the U-Net attacks share; UnlearnDiffAtk's and P4D's configs set their defaults."""

    tokens: int | None = 5
    iterations: int = 40
    mode: Mode = "prepend"
    eval_timesteps: int = option(4, "fixed (t, ε) draws on which the reported loss is computed", metavar="E")
    target_steps: int = option(50, "denoising steps of generated targets")
    height: int | None = option(None, "image size in pixels, multiple of 8", default="the pipeline's")
    width: int | None = option(None, "image size in pixels, multiple of 8", default="the pipeline's")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eval_timesteps", "target_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AmsmoothError(f"{name} must be an integer >= 1, got {value}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise AmsmoothError(f"{name} must be a positive multiple of 8, got {value}")


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
           source: dict[str, Any] | None = None) -> DiffusionModels:
        """From a loaded pipeline (its U-Net is the original) and the attacked U-Net (default: the original)."""
        encoder = TextEncoder(pipe.text_encoder, pipe.tokenizer, name=type(pipe.text_encoder).__name__)
        return cls(pipe, pipe.unet if unet is None else unet, pipe.unet, encoder, dict(source or {}))

    @classmethod
    def load(cls, model: str, unet: str | None = None, keep_original: bool = True,
             device: str | torch.device = "cpu") -> DiffusionModels:
        """Load ``model`` (id, folder or "tiny") and the unlearned U-Net at ``unet`` as ``amsmooth generate`` does;
        the original U-Net is kept as a second module only when ``keep_original``."""
        from ..models.load import load_pipeline  # lazy: the attack configs (`attack --help`) without diffusers
        from ..models.weights import load_unet_weights

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


def generate_image(models: DiffusionModels, text: str, case: PromptCase, steps: int, height: int, width: int,
                   smoothing: AdaptiveMedianSmoothing | None = None,
                   noise: torch.Generator | None = None) -> Any:
    """One image (PIL) of ``text`` by the *attacked* U-Net, the case's seed and guidance (through AMS when
    ``smoothing``: the conditioning the defended pipeline would use)."""
    gen = GenerationSettings(steps=steps, height=height, width=width)
    pipe, original = models.pipe, models.pipe.unet
    kwargs: dict[str, Any] = {"prompt": text}
    if smoothing is not None:
        kwargs = {"prompt_embeds": smoothing.encode([text], noise).to(models.encoder.dtype)}
    pipe.unet = models.unet
    try:
        with torch.no_grad():
            out = pipe(generator=torch.Generator().manual_seed(gen.seed_of(case)), **gen.kwargs(case), **kwargs)
    finally:
        pipe.unet = original
    return out.images[0]


class UNetAttack(TextAttack):
    """A token attack through the attacked (unlearned) U-Net's noise prediction (UnlearnDiffAtk, P4D)."""

    name = "unet"
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

    def case_objective(self, case: PromptCase) -> DenoisingObjective:
        return DenoisingObjective(self.encoder, self.models.unet, self.models.pipe.scheduler, self.targets(case),
                                  self.reference(case.prompt), 1, self.config.eval_timesteps, self.smoothing,
                                  self.config.eot_samples, layout=self.layout)

    def settings(self) -> dict[str, Any]:
        folder = self.targets.folder
        return {"models": self.models.describe(), "target_images": None if folder is None else str(folder)}
