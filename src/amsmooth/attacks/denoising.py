"""What the U-Net attacks minimize: the attacked U-Net's noise-prediction error under the candidate's conditioning.

    loss(y) = E_{t,ε} || ε_θ(x_t, t, c(y)) − target(x_t, t) ||²,   x_t = add_noise(x0, ε, t)

x0 is the VAE latent of a target image. UnlearnDiffAtk (Zhang et al., 2024): target = ε, the true noise, so the
prompt makes the unlearned model denoise towards the target image. P4D (Chin et al., 2024): target =
ε_original(x_t, t, c(source prompt)), the original model's prediction, so the unlearned model with the adversarial
prompt behaves like the original one with the source prompt. c(y) is the plain conditioning, or the AMS-smoothed
one for an adaptive attack (:class:`~amsmooth.attacks.objective.ConditioningObjective`). Timesteps and noise are
drawn from the attack's generator; the mean over ``[C, h, w]`` is the squared error's scale (MSELoss's).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..smoothing import AdaptiveMedianSmoothing
from .objective import ConditioningObjective

Reference = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (x_t [S, C, h, w], t [S]) → target [S, C, h, w]


@dataclass
class UNetDraw:
    """One draw of the objective's randomness: S (timestep, noise) pairs and the smoothing noise if adaptive."""

    z: torch.Tensor | None        # AMS noise [m, n, L, D] (None: plain)
    timesteps: torch.Tensor       # t [S] (long, on the U-Net's device)
    latents: torch.Tensor         # x_t [S, C, h, w]
    target: torch.Tensor          # what ε_θ(x_t, t, c(y)) should match: [S, C, h, w]


def unet_forward(unet: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                 conditioning: torch.Tensor) -> torch.Tensor:
    """ε(x_t, t, c) for ``[N, C, h, w]``, ``[N]``, ``[N, L, D]`` → ``[N, C, h, w]`` float32."""
    dtype = next(unet.parameters()).dtype
    out = unet(latents.to(dtype), timesteps, encoder_hidden_states=conditioning.to(dtype), return_dict=False)[0]
    return out.float()


class DenoisingObjective(ConditioningObjective):
    """E_{t,ε} ||ε_θ(x_t, t, c(prefix ⊕ suffix)) − target||² for candidate prompts, plain or through AMS.

    ``reference`` None → target = ε (UnlearnDiffAtk); else target = reference(x_t, t) (P4D: the original U-Net
    under the source prompt, no gradient). Each ``draw`` takes ``timesteps_per_step`` pairs (t, ε);
    ``fix_evaluation`` draws ``eval_timesteps`` pairs once, on which candidates are compared and scored.
    """

    def __init__(self, encoder: TextEncoder, unet: torch.nn.Module, scheduler: Any, x0: torch.Tensor,
                 reference: Reference | None = None, timesteps_per_step: int = 1, eval_timesteps: int = 4,
                 smoothing: AdaptiveMedianSmoothing | None = None, eot_samples: int = 1,
                 prepend: bool = False, layout: Any = None) -> None:
        if x0.ndim != 4 or x0.shape[0] != 1:
            raise AmsmoothError(f"target latent must be [1, C, h, w], got {tuple(x0.shape)}")
        super().__init__(encoder, smoothing, eot_samples, max_batch=64, prepend=prepend, layout=layout)
        self.unet, self.scheduler, self.reference = unet, scheduler, reference
        self.device = next(unet.parameters()).device
        self.x0 = x0.to(self.device, torch.float32)
        self.timesteps_per_step, self.eval_timesteps = timesteps_per_step, eval_timesteps

    @property
    def rows_per_candidate(self) -> int:
        """Encoder rows one candidate costs per draw (the U-Net sees m·S rows)."""
        return super().rows_per_candidate * max(self.timesteps_per_step, self.eval_timesteps)

    def draw(self, generator: torch.Generator | None, count: int | None = None,
             timestep: int | None = None) -> UNetDraw:
        """``count`` timesteps t ~ U{0..T−1} (or all equal to ``timestep``) and noises ε ~ N(0, I) from
        ``generator``, then the smoothing noise, if adaptive, from the objective's own stream (a plain and an
        adaptive objective get the same (t, ε) from the same generator state)."""
        S = count or self.timesteps_per_step
        T = int(self.scheduler.config.num_train_timesteps)
        if timestep is None:
            t = torch.randint(T, (S,), generator=generator).to(self.device)
        else:
            t = torch.full((S,), int(timestep), dtype=torch.long, device=self.device)
        eps = torch.randn((S, *self.x0.shape[1:]), generator=generator).to(self.device)
        z = self.smoothing_draw()
        x_t = self.scheduler.add_noise(self.x0.expand(S, -1, -1, -1), eps, t)
        if self.reference is None:
            return UNetDraw(z, t, x_t, eps)
        with torch.no_grad():
            return UNetDraw(z, t, x_t, self.reference(x_t, t).float())

    def fix_evaluation(self, generator: torch.Generator | None) -> None:
        self.evaluation = self.draw(generator, self.eval_timesteps)

    def rerank_draw(self) -> UNetDraw:
        """The fixed evaluation (t, ε) with fresh smoothing noise."""
        ev = self.evaluation
        return UNetDraw(self.smoothing_draw(), ev.timesteps, ev.latents, ev.target)

    def batch_losses(self, batch: TokenizedBatch, z: UNetDraw, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the m EOT draws and S timesteps of ||ε_θ − target||² / (C·h·w): ``[B]``."""
        h = self.conditioning(batch, z.z, offset)                              # [B, m, L, D]
        B, m = h.shape[:2]
        S = z.timesteps.shape[0]
        cond = h.flatten(0, 1).repeat_interleave(S, dim=0).to(self.device)   # [B·m·S, L, D]
        pred = unet_forward(self.unet, z.latents.repeat(B * m, 1, 1, 1), z.timesteps.repeat(B * m), cond)
        err = ((pred - z.target.repeat(B * m, 1, 1, 1)) ** 2).mean(dim=(1, 2, 3))
        return err.reshape(B, m * S).mean(1)
