"""RACE: Robust Adversarial Concept Erasure (Kim et al., ECCV 2024) — ESD fine-tuning against PGD on the embedding.

Starting from an ESD U-Net (:mod:`.esd`; trained first unless one is given, as the reference's
``--pretrained_esd``), each iteration is an ESD iteration whose fine-tuned prediction is conditioned on an
**adversarial text embedding** instead of the erase text's own:

1. draw the erase text c, DDIM step i, x_T; sample x_t with the fine-tuned U-Net (ESD's steps 1–3);
2. PGD in the L∞ ball of radius ε around c's embedding e ``[1, L, D]``: a uniform random start in the ball, then
   ``pgd_steps`` signed steps of size α = ε/4 that lower the denoising loss ||x_T − ε_θ'(x_t, e + δ, t)||²
   (the embedding under which the fine-tuned model regenerates the concept best), each projected back to the
   ball and to [min e, max e];
3. loss = MSE(ε_θ'(x_t, e + δ, t), ε_θ*(x_t, t) − η·(ε_θ*(x_t, e, t) − ε_θ*(x_t, t))) (the ESD target, from the
   frozen U-Net on the clean embedding), optionally + λ·Σ L1(θ', θ_ESD) (the reference's ``--lasso``); one Adam step.

Reference: chkimmmmm/R.A.C.E., ``train-scripts/train-esd.py`` (``pgd_attack``, ``train_esd`` with
``--adv_train``): ε = 0.1, 10 PGD steps, α = ε/4, L2 attack loss, 1000 iterations, lr 1e-5. Every random draw
(ESD's and the PGD start) comes from the caller's ``torch.Generator``; see docs/unlearn.md for what differs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch

from ..config import option
from ..errors import AmsmoothError
from .esd import QUICK, ESDDraw, ESDSettings, ESDTrainer, esd

AdvLoss = Literal["l2", "l1"]
ADV_LOSSES: tuple[str, ...] = get_args(AdvLoss)
LASSO = 0.1        # the reference's --lasso λ (train-esd.py)
MAX_LOSS = 500.0   # train-esd.py: `if loss > 500.: raise ValueError('Loss is too high, training is not working')`


@dataclass(frozen=True)
class RACESettings:
    """RACE hyper-parameters; defaults are the reference's (docs/unlearn.md gives each source)."""

    esd: ESDSettings = field(default_factory=ESDSettings)  # the ESD stage, and the training knobs of both stages
    iterations: int = 1000          # adversarial fine-tuning iterations (the --iterations flag of `unlearn race`)
    epsilon: float = option(0.1, "L∞ radius of the embedding perturbation")
    pgd_steps: int = option(10, "PGD steps per iteration")
    alpha: float | None = option(None, "PGD step size", flag="pgd-alpha", default="epsilon/4")
    adv_loss: AdvLoss = option("l2", "the attack's denoising loss")   # l2 (MSE) or l1
    lasso: float = option(0.0, f"add λ·L1(θ, θ_ESD) to the loss (the reference's --lasso: λ {LASSO:g})",
                          const=LASSO, metavar="LAMBDA")   # λ of the L1 pull towards the starting (ESD) weights

    @property
    def step_size(self) -> float:
        return self.epsilon / 4 if self.alpha is None else self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alpha": self.step_size}

    def validate(self) -> None:
        self.esd.validate()
        if self.iterations < 1:
            raise AmsmoothError(f"iterations must be >= 1, got {self.iterations}")
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise AmsmoothError(f"epsilon must be a number >= 0, got {self.epsilon}")
        if self.pgd_steps < 0:
            raise AmsmoothError(f"pgd_steps must be >= 0, got {self.pgd_steps}")
        if not (math.isfinite(self.step_size) and self.step_size >= 0):
            raise AmsmoothError(f"alpha must be a number >= 0, got {self.alpha}")
        if self.adv_loss not in ADV_LOSSES:
            raise AmsmoothError(f"unknown adv_loss '{self.adv_loss}'; choose one of {', '.join(ADV_LOSSES)}")
        if not (math.isfinite(self.lasso) and self.lasso >= 0):
            raise AmsmoothError(f"lasso must be a number >= 0, got {self.lasso}")


# Labelled CPU setting: NOT the reference; ESD's quick stage (50 iterations, 10 DDIM steps) + 50 RACE iterations.
QUICK_RACE = RACESettings(esd=QUICK, iterations=50)


class RACETrainer(ESDTrainer):
    """ESD's trainer whose fine-tuned prediction sees a PGD-perturbed erase embedding (module docstring).

    start: the state dict the fine-tuned copy starts from (an ESD U-Net); None: ``pipe.unet`` itself.
    """

    def __init__(self, pipe: Any, erase: Sequence[str], settings: RACESettings,
                 start: Mapping[str, torch.Tensor] | None = None) -> None:
        settings.validate()
        super().__init__(pipe, erase, settings.esd)
        self.race = settings
        if start is not None:
            self.model.load_state_dict(dict(start))
        params = dict(self.model.named_parameters())
        self.anchor = [params[n].detach().clone() for n in self.names] if settings.lasso else []

    def attack_objective(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
        """The attack's denoising loss between x_T ``[1, C, s, s]`` and ε_θ'(x_t, emb, t) (a scalar, with
        gradients into ``emb`` ``[1, L, D]``)."""
        pred = self.model(self.sampler.scale_model_input(x_t, t), t, encoder_hidden_states=emb, return_dict=False)[0]
        fn = torch.nn.functional.mse_loss if self.race.adv_loss == "l2" else torch.nn.functional.l1_loss
        return fn(pred.float(), noise.to(pred.device).float())

    def attack(self, x_t: torch.Tensor, t: torch.Tensor, d: ESDDraw,
               generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """PGD on the erase text's embedding e ``[1, L, D]``: (e + δ, the objective at the last step's input).
        The random start is drawn on the CPU from ``generator``."""
        e = self.erase_emb[d.text_index:d.text_index + 1]
        lo, hi, eps = e.min(), e.max(), self.race.epsilon
        start = (torch.rand(e.shape, generator=generator) * 2 - 1) * eps
        adv = torch.clamp(e + start.to(e.device, e.dtype), lo, hi)
        objective = float("nan")
        for _ in range(self.race.pgd_steps):
            adv.requires_grad_(True)
            loss = self.attack_objective(x_t, t, adv, d.noise)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() - self.race.step_size * grad.sign()         # descend the denoising loss
            adv = torch.clamp(e + torch.clamp(adv - e, -eps, eps), lo, hi)
            objective = float(loss.detach())
        return adv.detach(), objective

    def lasso_penalty(self) -> torch.Tensor:
        """λ·Σ_p mean|θ'_p − θ_start,p| over the trained parameters (0 without lasso)."""
        if not self.anchor:
            return torch.zeros((), device=self.device)
        params = dict(self.model.named_parameters())
        return self.race.lasso * sum(torch.nn.functional.l1_loss(params[n], a) for n, a in
                                     zip(self.names, self.anchor, strict=True))

    def step(self, generator: torch.Generator) -> float:  # type: ignore[override]
        """One RACE iteration (draw, x_t, PGD, one Adam step); returns the loss before the step."""
        loss, _ = self.adversarial_step(generator)
        return loss

    def adversarial_step(self, generator: torch.Generator) -> tuple[float, float]:
        """One RACE iteration; (loss before the step, the attack's last objective)."""
        d = self.draw(generator)
        x_t = self.sample(d)
        t = self.timestep(d.step)
        adv, objective = self.attack(x_t, t, d, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x_t, t, d.text_index, emb=adv) + self.lasso_penalty()
        value = float(loss.detach())
        if not value <= MAX_LOSS:
            raise AmsmoothError(f"RACE loss {value:.4g} exceeds {MAX_LOSS:g}: training diverged (the reference "
                                f"stops here too); lower --lr or --epsilon")
        loss.backward()
        self.optimizer.step()
        return value, objective


@dataclass
class RACELog:
    """Per-iteration losses: the ESD stage's (empty when started from a given ESD U-Net), RACE's, and the attack's
    last denoising objective."""

    esd_losses: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    attack_losses: list[float] = field(default_factory=list)


def race(pipe: Any, erase: Sequence[str], settings: RACESettings, generator: torch.Generator,
         start: Mapping[str, torch.Tensor] | None = None,
         progress: Callable[[str, int, float], None] | None = None) -> tuple[dict[str, torch.Tensor], RACELog]:
    """RACE-fine-tune a copy of ``pipe.unet`` to erase ``erase``; returns its full state dict and the losses
    (``pipe`` unchanged).

    start: an ESD U-Net's state dict to start from (the reference's ``--pretrained_esd``); None: train ESD first
    with ``settings.esd``, from the same generator. progress: called after each iteration with (stage "esd" or
    "race", iteration, loss).
    """
    settings.validate()
    log = RACELog()

    def esd_progress(it: int, loss: float) -> None:
        log.esd_losses.append(loss)
        if progress is not None:
            progress("esd", it, loss)

    if start is None:
        start = esd(pipe, erase, settings.esd, generator, progress=esd_progress)
    trainer = RACETrainer(pipe, erase, settings, start)
    for it in range(settings.iterations):
        loss, objective = trainer.adversarial_step(generator)
        log.losses.append(loss)
        log.attack_losses.append(objective)
        if progress is not None:
            progress("race", it, loss)
    return trainer.state_dict(), log


__all__ = ["ADV_LOSSES", "QUICK_RACE", "RACELog", "RACESettings", "RACETrainer", "race"]
