"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023) — fine-tuning with negative guidance.

A copy θ' of the U-Net is trained so that, on latents x_t the model itself produces for the erase prompt c,

    ε_θ'(x_t, c, t)  →  ε_θ*(x_t, t) − η·(ε_θ*(x_t, c, t) − ε_θ*(x_t, t))

with θ* the frozen original U-Net, ε(x_t, t) its unconditional (empty-prompt) prediction and η the negative
guidance. One iteration, as ``esd_diffusers.py`` (rohitgandikota/erasing) does it:

1. pick one erase text c; draw a DDIM step i ∈ {1, …, N−2} (N = ``ddim_steps``) and x_T ~ N(0, I);
2. run i DDIM steps (deterministic, η_DDIM = 0) from x_T with the **fine-tuned** U-Net θ', classifier-free
   guidance ``start_guidance`` on c: x_t;
3. query the U-Nets at the timestep the reference uses: the 1000-step grid's ``timesteps[⌊i/N·T⌋]``
   (within one DDIM stride of the timestep x_t sits at);
4. loss = MSE(ε_θ'(x_t, c, t), target); one Adam step on the parameters of the chosen train method.

Only ``nn.Linear`` / ``nn.Conv2d`` modules are trained (the reference's ``FineTunedModel``): norms stay frozen.
Every random draw (erase text, i, x_T) comes from the caller's ``torch.Generator``; the U-Nets run in eval mode
(the reference calls ``train()``, which changes nothing for SD: its U-Net has no active dropout).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import option
from ..encoders import TextEncoder
from ..errors import AmsmoothError

# train method → which Linear/Conv2d modules (by their name in the diffusers U-Net) are fine-tuned.
TRAIN_METHODS: dict[str, str] = {
    "x": "ESD-x: cross-attention only (modules under attn2); the paper's choice for artistic styles",
    "u": "ESD-u: everything except cross-attention; the paper's choice for nudity and objects",
    "full": "every Linear/Conv2d module",
    "selfattn": "self-attention only (modules under attn1)",
    "x-strict": "only the cross-attention key and value projections (attn2.to_k, attn2.to_v; esd_sd.py's esd-x-strict)",
}
# esd_diffusers.py's names for the same methods.
REFERENCE_NAMES = {"xattn": "x", "noxattn": "u", "full": "full", "selfattn": "selfattn"}


@dataclass(frozen=True)
class ESDSettings:
    """ESD hyper-parameters. Defaults are the reference's (see docs/unlearn.md for the source of each); the fields
    with a help text are `amsmooth unlearn` flags."""

    method: str = option("u", "parameters to fine-tune: " + "; ".join(f"{k}: {v}" for k, v in TRAIN_METHODS.items()),
                         choices=tuple(TRAIN_METHODS))
    iterations: int = option(1000, "training iterations")
    lr: float = option(1e-5, "Adam learning rate")
    negative_guidance: float = option(1.0, "negative guidance η", metavar="ETA")
    start_guidance: float = option(3.0, "CFG scale when sampling x_t")
    ddim_steps: int = option(50, "DDIM steps of the x_t sampling")
    sample_size: int | None = option(None, "side of x_t in U-Net units, latent pixels (smaller is cheaper on a CPU)",
                                     default="the U-Net's sample_size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """One AmsmoothError naming the first bad field."""
        if self.method not in TRAIN_METHODS:
            raise AmsmoothError(f"unknown ESD method '{self.method}'; choose one of {', '.join(TRAIN_METHODS)}")
        if self.iterations < 1:
            raise AmsmoothError(f"iterations must be >= 1, got {self.iterations}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AmsmoothError(f"lr must be a positive number, got {self.lr}")
        for name in ("negative_guidance", "start_guidance"):
            if not math.isfinite(getattr(self, name)):
                raise AmsmoothError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.ddim_steps < 3:
            raise AmsmoothError(f"ddim_steps must be >= 3 (the step i is drawn from 1..ddim_steps-2), got "
                                f"{self.ddim_steps}")
        if self.sample_size is not None and self.sample_size < 1:
            raise AmsmoothError(f"sample_size must be >= 1, got {self.sample_size}")


# Labelled CPU setting: NOT the reference; for smoke runs and demos of the tooling on a CPU.
QUICK = ESDSettings(iterations=50, ddim_steps=10)


def _selected(method: str, module_name: str) -> bool:
    if method == "x":
        return "attn2" in module_name
    if method == "u":
        return "attn2" not in module_name
    if method == "selfattn":
        return "attn1" in module_name
    if method == "x-strict":
        return "attn2.to_k" in module_name or "attn2.to_v" in module_name
    return True  # full


def trainable_parameter_names(unet: torch.nn.Module, method: str) -> list[str]:
    """Names (state-dict keys) of the parameters ESD ``method`` fine-tunes: those of the selected Linear/Conv2d
    modules, in module order."""
    names = []
    for module_name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and _selected(method, module_name):
            names += [f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return names


@dataclass
class ESDDraw:
    """The randomness of one ESD iteration: erase-text index, DDIM step i and the start noise x_T [1, C, s, s]."""

    text_index: int
    step: int
    noise: torch.Tensor


class ESDTrainer:
    """Fine-tunes a copy of ``pipe.unet`` with ESD; ``pipe`` itself is never changed.

    erase: the erase texts (one is drawn per iteration). The text embeddings ``[E, L, D]`` come from the
    pipeline's own text encoder through :class:`amsmooth.encoders.TextEncoder` (CLIP, BERT-family, …).
    """

    def __init__(self, pipe: Any, erase: Sequence[str], settings: ESDSettings) -> None:
        from diffusers import DDIMScheduler


        settings.validate()
        self.erase = check_texts(erase, "erase")
        self.settings = settings
        self.frozen = pipe.unet.eval()
        self.device = next(self.frozen.parameters()).device
        self.model = copy.deepcopy(self.frozen).eval()
        self.names = trainable_parameter_names(self.model, settings.method)
        if not self.names:
            raise AmsmoothError(f"ESD method '{settings.method}' selects no parameter of this U-Net "
                                f"({TRAIN_METHODS[settings.method]})")
        chosen = set(self.names)
        params = dict(self.model.named_parameters())
        for name, p in params.items():
            p.requires_grad_(name in chosen)
        self.optimizer = torch.optim.Adam([params[n] for n in self.names], lr=settings.lr)
        with torch.no_grad():
            emb = TextEncoder(pipe.text_encoder, pipe.tokenizer).encode([*self.erase, ""])
        dtype = next(self.frozen.parameters()).dtype
        self.erase_emb = emb[:-1].to(self.device, dtype)    # [E, L, D]
        self.null_emb = emb[-1:].to(self.device, dtype)     # [1, L, D]
        self.sampler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sampler.set_timesteps(settings.ddim_steps)
        grid = DDIMScheduler.from_config(pipe.scheduler.config)
        T = int(grid.config.num_train_timesteps)
        grid.set_timesteps(T)
        self.grid_timesteps = grid.timesteps
        self.T = T
        config = self.frozen.config
        side = settings.sample_size or int(config.sample_size)
        self.shape = (1, int(config.in_channels), side, side)

    # ------------------------------------------------------------------ one iteration, in parts
    def draw(self, generator: torch.Generator) -> ESDDraw:
        """Erase text, DDIM step i ∈ {1, …, N−2} and x_T, from ``generator`` (CPU draws, in that order)."""
        k = int(torch.randint(len(self.erase), (1,), generator=generator))
        i = int(torch.randint(1, self.settings.ddim_steps - 1, (1,), generator=generator))
        noise = torch.randn(self.shape, generator=generator) * self.sampler.init_noise_sigma
        return ESDDraw(k, i, noise)

    def timestep(self, step: int) -> torch.Tensor:
        """The reference's query timestep for DDIM step i: the T-step grid's timesteps[⌊i/N·T⌋]."""
        return self.grid_timesteps[int(step / self.settings.ddim_steps * self.T)]

    @torch.no_grad()
    def sample(self, d: ESDDraw, unet: torch.nn.Module | None = None) -> torch.Tensor:
        """x_t ``[1, C, s, s]``: i DDIM steps from x_T with ``unet`` (default: the fine-tuned one), CFG on the
        erase text at ``start_guidance``."""
        unet = self.model if unet is None else unet
        dtype = self.erase_emb.dtype
        cond = torch.cat([self.null_emb, self.erase_emb[d.text_index:d.text_index + 1]])     # [2, L, D]
        x = d.noise.to(self.device, dtype)
        g = self.settings.start_guidance
        for t in self.sampler.timesteps[:d.step]:
            inp = self.sampler.scale_model_input(torch.cat([x, x]), t)
            uncond, text = unet(inp, t, encoder_hidden_states=cond, return_dict=False)[0].chunk(2)
            x = self.sampler.step(uncond + g * (text - uncond), t, x, return_dict=False)[0]
        return x

    @torch.no_grad()
    def target(self, x_t: torch.Tensor, t: torch.Tensor, text_index: int) -> torch.Tensor:
        """ε_θ*(x_t, t) − η·(ε_θ*(x_t, c, t) − ε_θ*(x_t, t)) from the frozen U-Net: ``[1, C, s, s]``."""
        cond = torch.cat([self.null_emb, self.erase_emb[text_index:text_index + 1]])
        inp = self.sampler.scale_model_input(torch.cat([x_t, x_t]), t)
        null, text = self.frozen(inp, t, encoder_hidden_states=cond, return_dict=False)[0].chunk(2)
        return null - self.settings.negative_guidance * (text - null)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, text_index: int,
             unet: torch.nn.Module | None = None, emb: torch.Tensor | None = None) -> torch.Tensor:
        """MSE(ε_θ'(x_t, c, t), target): a scalar, with gradients into ``unet`` (default: the fine-tuned one).

        emb: the conditioning ``[1, L, D]`` of the fine-tuned prediction (default: the erase text's embedding; RACE
        passes its adversarial one). The target always uses the erase text's own embedding."""
        unet = self.model if unet is None else unet
        target = self.target(x_t, t, text_index)
        inp = self.sampler.scale_model_input(x_t, t)
        cond = self.erase_emb[text_index:text_index + 1] if emb is None else emb
        pred = unet(inp, t, encoder_hidden_states=cond, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def step(self, generator: torch.Generator) -> float:
        """One ESD iteration (draw, sample x_t with θ', one Adam step); returns the loss before the step."""
        d = self.draw(generator)
        x_t = self.sample(d)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x_t, self.timestep(d.step), d.text_index)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fine-tuned U-Net's full state dict (diffusers layout), detached CPU copies."""
        return {k: v.detach().to("cpu").clone().contiguous() for k, v in self.model.state_dict().items()}


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """The texts as a list; one AmsmoothError if there are none or one is blank."""
    out = [str(t) for t in texts]
    if not out:
        raise AmsmoothError(f"no {what} text given")
    if any(not t.strip() for t in out):
        raise AmsmoothError(f"{what} texts must not be empty or blank, got {out!r}")
    return out


def esd(pipe: Any, erase: Sequence[str], settings: ESDSettings, generator: torch.Generator,
        progress: Callable[[int, float], None] | None = None) -> dict[str, torch.Tensor]:
    """ESD-fine-tune a copy of ``pipe.unet`` to erase ``erase``; returns its full state dict (``pipe`` unchanged).

    generator: the only source of randomness (same seed → same weights on the same machine and settings).
    progress: called after each iteration with (iteration, loss).
    """
    trainer = ESDTrainer(pipe, erase, settings)
    for it in range(settings.iterations):
        loss = trainer.step(generator)
        if progress is not None:
            progress(it, loss)
    return trainer.state_dict()
