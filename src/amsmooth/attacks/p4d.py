"""P4D (Chin et al., ICML 2024), as released in joycenerd/P4D (``prompt_optimization/optimize_n.py``,
``optimize_k.py``, ``configs/esd_nudity_optmz_config.json``).

The unlearned U-Net with the adversarial prompt should predict what the *original* U-Net predicts for the source
prompt: loss = ||ε_unlearned(x_t, t, c(adv)) − ε_original(x_t, t, c(source))||² at a random t ~ U{0..999} and fresh
noise per step. The prompt is optimized in token-embedding space (PEZ): AdamW (lr 0.1, weight decay 0.1) on
continuous embeddings, each step projected to the nearest token by *cosine* similarity over the whole vocabulary
(every non-special token), the gradient taken at the projection. 3000 steps; every 50 steps (from step 0) the
projected prompt is scored and the best one kept — by CLIP image similarity between the target image and the
unlearned model's image of that prompt (25 sampling steps, guidance 7.5, the case's seed; reference CLIP:
ViT-H-14, here ``--clip SRC``), or, with ``select="loss"``, by the denoising loss on the fixed evaluation draw.

- P4D-N (``variant="n"``): K = 16 tokens *replace* the prompt.
- P4D-K (``variant="k"``): the source tokens are kept and one searched token is inserted before every
  ``every_k`` = 3 of them and at the end (K = n // 3 + 1 for n source tokens); only those are optimized.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch

from ..config import option
from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from ..prompts import PromptCase
from .base import AttackResult, Progress
from .denoising import DenoisingObjective, Reference, unet_forward
from .gradient import check_gradient_settings, projected_gradient_search
from .unet import UNetAttack, UNetAttackConfig, generate_image
from .vocab import Mode

Variant = Literal["n", "k"]
VARIANTS: dict[str, Mode] = {"n": "replace", "k": "interleave"}   # P4D-N, P4D-K: where the tokens go


@dataclass(frozen=True)
class P4DConfig(UNetAttackConfig):
    """P4D's knobs (reference: 16 tokens, 3000 AdamW steps at lr 0.1 / wd 0.1, cosine projection, selection by
    image similarity every 50 steps)."""

    variant: Variant = option("n", "P4D-N (replace) or P4D-K (interleave)")
    tokens: int | None = option(16, note="for P4D-N (P4D-K derives K from the prompt)")
    iterations: int = 3000
    mode: Mode | None = option(None, default="per variant: " + ", ".join(f"{k} {v}" for k, v in VARIANTS.items()))
    every_k: int = option(3, "one searched token per this many source tokens in P4D-K")
    step_size: float = option(0.1, "AdamW lr")
    step_units: str = "raw"
    optimizer: str = "adamw"
    weight_decay: float = option(0.1, "weight decay")
    select_every: int = option(50, "steps between selections")
    select: Literal["image", "loss"] = option("image", "keep the prompt by CLIP image similarity (reference; "
                                              "needs --clip) or by loss")
    sampling_steps: int = 25          # images for the selection
    guidance: float = 7.5

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise AmsmoothError(f"unknown P4D variant {self.variant!r}; known: n (P4D-N), k (P4D-K)")
        if self.mode is None:
            object.__setattr__(self, "mode", VARIANTS[self.variant])
        super().__post_init__()
        check_gradient_settings(self)
        if self.select not in ("image", "loss"):
            raise AmsmoothError(f"select must be 'image' or 'loss', got {self.select!r}")
        if not isinstance(self.every_k, int) or self.every_k < 1:
            raise AmsmoothError(f"every_k must be an integer >= 1, got {self.every_k}")


class P4D(UNetAttack):
    """P4D-N / P4D-K: tokens so that the unlearned U-Net predicts what the original predicts for the source."""

    name = "p4d"
    variant_fields = ("variant",)                # P4D-N or P4D-K
    config_class = P4DConfig
    quick = {"iterations": 6, "select_every": 3, "select": "loss"}
    needs_original = True
    vocabulary_kind = "all"

    def __init__(self, *args: Any, clip: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip = clip                     # a ClipImageEncoder (or any images → features callable)
        if self.config.select == "image" and clip is None:
            raise AmsmoothError("P4D keeps the prompt whose image is most similar to the target (reference): give "
                                "--clip SRC (a CLIP model), or --select loss")

    def reference(self, prompt: str) -> Reference:
        """ε_orig(x_t, t, c(source prompt)), plain conditioning, no gradient: ``[S, C, h, w]``."""
        original = self.models.original
        cond = self.encoder.encode([prompt])                                   # [1, L, D]

        def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet_forward(original, x_t, t, cond.expand(t.shape[0], -1, -1).to(x_t.device))
        return predict

    def run_case(self, case: PromptCase, generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> AttackResult:
        self._case = case
        return super().run_case(case, generator, progress)

    def case_objective(self, case: PromptCase) -> DenoisingObjective:
        objective = super().case_objective(case)
        if self.config.select == "image":
            target = self._features([self._target_image(objective.x0)])
            objective.selector = partial(self._image_score, target, objective)
        return objective

    def search(self, objective: DenoisingObjective, prefix: TokenizedBatch, generator: torch.Generator | None,
               progress: Progress | None) -> tuple[list[int], list[float]]:
        return projected_gradient_search(objective, prefix, self.vocabulary, self.config, generator, progress,
                                         metric="cosine")

    def _features(self, images: list) -> torch.Tensor:
        f = self.clip(images).float()
        return f / f.norm(dim=-1, keepdim=True)

    def _target_image(self, x0: torch.Tensor) -> Any:
        vae = self.models.pipe.vae
        with torch.no_grad():
            image = vae.decode((x0 / vae.config.scaling_factor).to(vae.device, vae.dtype)).sample
        return self.models.pipe.image_processor.postprocess(image.float(), output_type="pil")[0]

    def _image_score(self, target: torch.Tensor, objective: DenoisingObjective, prefix: TokenizedBatch,
                     tokens: list[int]) -> float:
        """−cos(CLIP(target image), CLIP(unlearned model's image of the candidate)) (lower is better)."""
        text, _ = self.compose_text(prefix, self.encoder.tokenizer.decode(list(prefix.content_ids[0])), tokens)
        case = replace(self._case, guidance=self.config.guidance) if self._case.guidance is None else self._case
        image = generate_image(self.models, text, case, self.config.sampling_steps, self.config.height,
                               self.config.width, self.smoothing, objective.noise_generator)
        return -float((self._features([image]) @ target.T).mean())
