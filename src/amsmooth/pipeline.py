"""Defended generation: any diffusers Stable Diffusion pipeline, conditioned on adaptive-median-smoothed text.

A wrapper, not a fork: the conditional embedding comes from ``AdaptiveMedianSmoothing``, the unconditional /
negative one is encoded plainly, and the pipeline is called with ``prompt_embeds=`` / ``negative_prompt_embeds=``.
With ``stage="unet"`` the naive median smoothing of Sec. 3.2 is used instead: every U-Net noise prediction is
the element-wise median of n predictions under n noisy conditionings (about n× the U-Net cost).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .concepts import Concept, resolve_concept
from .config import SmoothingConfig
from .encoders import TextEncoder
from .errors import AmsmoothError
from .smoothing import AdaptiveMedianSmoothing, median_smooth

STAGES = ("text", "unet")
# Pipeline arguments that act only while the pipeline encodes the prompt itself: with prompt_embeds given they
# would be dropped silently, so they are refused. (prompt_embeds themselves: pass prompts, the wrapper encodes.)
UNSUPPORTED = ("clip_skip", "prompt_embeds", "negative_prompt_embeds")


@dataclass
class DefendedOutput:
    """Images (as the pipeline returns them) and what the defense did: per prompt σ and relevance, timings."""

    images: Any
    relevance: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    defended: bool = True               # False for the undefended baseline (ams=None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def execution_device(pipe: Any) -> torch.device:
    """The device ``pipe``'s models compute on (where latents and prompt embeddings must be created).

    diffusers has no public name for it: ``DiffusionPipeline._execution_device``, the property diffusers' own
    ``__call__`` uses, follows CPU and group offloading, where the public ``pipe.device`` says cpu. This is the one
    place amsmooth reads it from outside a pipeline class; pipelines without it answer ``pipe.device``.
    """
    if hasattr(pipe, "_execution_device"):
        return pipe._execution_device
    return pipe.device


def derive_generator(generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Generator | None:
    """The smoothing noise's own CPU generator, seeded from the image generator's seed (so the image latents are
    drawn exactly as without the defense)."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    if g is None:
        return None
    return torch.Generator().manual_seed((g.initial_seed() ^ 0x5EED5EED) & (2**63 - 1))


def smoothing_generators(generator: torch.Generator | Sequence[torch.Generator] | None, prompts: int
                         ) -> torch.Generator | list[torch.Generator] | None:
    """Per-prompt smoothing generators from the image generators: a list of ``prompts × K`` image generators (one
    per image, as diffusers takes them) gives prompt b the generator derived from its first image's; one image
    generator gives one derived generator (every prompt then draws as if alone with it)."""
    if not isinstance(generator, (list, tuple)):
        return derive_generator(generator)
    if len(generator) % prompts:
        raise AmsmoothError(f"{len(generator)} generators for {prompts} prompts; give one, or one per image")
    per = len(generator) // prompts
    return [derive_generator(generator[b * per]) for b in range(prompts)]


@contextlib.contextmanager
def unet_median_smoothing(unet: torch.nn.Module, conds: torch.Tensor, max_batch: int = 64) -> Iterator[None]:
    """Within the block, the U-Net's conditional prediction is median_i ε(x_t, conds[i], t) (Sec. 3.2).

    ``conds``: ``[n, N, L, D]`` noisy conditionings for the N conditional rows. With classifier-free guidance the
    pipeline's batch is ``[uncond (N); cond (N)]``: the unconditional half is predicted plainly.
    """
    original = unet.forward
    n, N = conds.shape[:2]

    def forward(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        rows = sample.shape[0]
        if rows not in (N, 2 * N):
            raise AmsmoothError(f"U-Net smoothing expected a batch of {N} or {2 * N} rows, got {rows}")
        t = timestep[-N:] if torch.is_tensor(timestep) and timestep.ndim == 1 else timestep
        cond_x = sample[-N:]
        preds = []
        for s in range(0, n, max(1, max_batch // N)):
            c = conds[s:s + max(1, max_batch // N)]
            m = c.shape[0]
            tt = t.repeat(m) if torch.is_tensor(t) and t.ndim == 1 else t
            out = original(cond_x.repeat(m, *[1] * (cond_x.ndim - 1)), tt, *args,
                           encoder_hidden_states=c.reshape(m * N, *c.shape[2:]).to(sample.dtype),
                           return_dict=False, **kwargs)[0]
            preds.append(out.reshape(m, N, *out.shape[1:]))
        cond_pred = median_smooth(torch.cat(preds))
        if rows == 2 * N:
            t_u = timestep[:N] if torch.is_tensor(timestep) and timestep.ndim == 1 else timestep
            uncond = original(sample[:N], t_u, *args, encoder_hidden_states=encoder_hidden_states[:N],
                              return_dict=False, **kwargs)[0]
            cond_pred = torch.cat([uncond, cond_pred])
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=cond_pred)
        return (cond_pred,)

    patched = "forward" in vars(unet)   # an accelerate hook (offload) keeps its own forward on the instance
    unet.forward = forward
    try:
        yield
    finally:
        if patched:
            unet.forward = original
        else:
            del unet.forward


class DefendedPipeline:
    """A diffusers SD pipeline (text-to-image or image-to-image) with Adaptive Median Smoothing.

    ``ams=None`` runs the pipeline undefended through the same code path (the ``--defense none`` baseline).
    """

    def __init__(self, pipe: Any, ams: AdaptiveMedianSmoothing | None = None, stage: str = "text") -> None:
        if stage not in STAGES:
            raise AmsmoothError(f"unknown smoothing stage {stage!r}; choose one of {', '.join(STAGES)}")
        self.pipe = pipe
        self.ams = ams
        self.stage = stage
        self.encoder = ams.encoder if ams is not None else TextEncoder(pipe.text_encoder, pipe.tokenizer)
        if self.encoder.model is not pipe.text_encoder:
            raise AmsmoothError("the smoothing's text encoder must be the pipeline's own text encoder")

    @classmethod
    def from_pipeline(cls, pipe: Any, concepts: Sequence[str | Concept] = ("nudity",),
                      config: SmoothingConfig | None = None, stage: str = "text") -> DefendedPipeline:
        """Defend ``pipe`` against ``concepts`` (built-in names, .safetensors paths or Concept objects).

        A diffusers SD 1.x/2.x, SDXL, SD3 or Flux pipeline gets its family's defended class (a real diffusers
        pipeline, :mod:`amsmooth.families`); anything else (e.g. SLD) this wrapper."""
        from .families import defend_pipeline, defended_class

        if defended_class(pipe) is not None:
            return defend_pipeline(pipe, concepts, config, stage)
        enc = TextEncoder(pipe.text_encoder, pipe.tokenizer, name=type(pipe.text_encoder).__name__)
        resolved = [c if isinstance(c, Concept) else resolve_concept(c, enc) for c in concepts]
        return cls(pipe, AdaptiveMedianSmoothing(enc, resolved, config), stage)

    @property
    def device(self) -> torch.device:
        return execution_device(self.pipe)

    # ------------------------------------------------------------------ conditioning
    def conditioning(self, prompts: list[str], negative: list[str],
                     smoothing_generator: torch.Generator | Sequence[torch.Generator] | None,
                     ) -> tuple[torch.Tensor, torch.Tensor, list[dict], torch.Tensor | None]:
        """(cond ``[B, L, D]``, negative ``[B, L, D]``, relevance per prompt, U-Net-stage conds ``[n, B, L, D]``)."""
        batch = self.encoder.tokenize(prompts)
        negative_embeds = self.encoder.encode(negative)
        if self.ams is None:
            return self.encoder.encode(batch), negative_embeds, [], None
        with torch.no_grad():
            rel = self.ams.scores(batch)
            info = [self.ams.describe(batch, rel, b) for b in range(len(batch))]
            if self.stage == "text":
                return self.ams.smooth(batch, rel.sigma, smoothing_generator), negative_embeds, info, None
            plain = self.encoder.encode(batch)
            if float(rel.sigma.max()) == 0.0:
                return plain, negative_embeds, info, None
            conds = self.ams.noisy_encodings(batch, rel.sigma, self.ams.config.n, smoothing_generator)
            return plain, negative_embeds, info, conds

    # ------------------------------------------------------------------ generation
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 num_images_per_prompt: int = 1,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 smoothing_generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 **kwargs: Any) -> DefendedOutput:
        """Generate like the wrapped pipeline; every other argument (steps, guidance, size, image=…) passes through.

        The smoothing noise comes from ``smoothing_generator`` (one, or one per prompt; default: derived from
        ``generator``: per prompt from its first image's generator when a list is given), so each prompt's
        conditioning is the same alone or in any batch.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise AmsmoothError("no prompts to generate")
        for name in UNSUPPORTED:
            if kwargs.get(name) is not None:
                raise AmsmoothError(f"{name} is not supported by DefendedPipeline: the pipeline is given the text "
                                    f"conditioning (prompt_embeds) and diffusers ignores {name} then")
        negative = self._negatives(negative_prompt, len(prompts))
        smoothing_generator = smoothing_generator or smoothing_generators(generator, len(prompts))
        device = self.device
        _sync(device)
        t0 = time.perf_counter()
        cond, neg, info, conds = self.conditioning(prompts, negative, smoothing_generator)
        _sync(device)
        t1 = time.perf_counter()
        ctx = contextlib.nullcontext()
        if conds is not None:
            conds = conds.repeat_interleave(num_images_per_prompt, dim=1).to(device)
            ctx = unet_median_smoothing(self.pipe.unet, conds, self.ams.config.max_batch)
        dtype = self.pipe.unet.dtype
        with ctx:
            out = self.pipe(prompt_embeds=cond.to(device, dtype), negative_prompt_embeds=neg.to(device, dtype),
                            num_images_per_prompt=num_images_per_prompt, generator=generator, **kwargs)
        _sync(device)
        t2 = time.perf_counter()
        return DefendedOutput(out.images, info, {"text_s": t1 - t0, "denoise_decode_s": t2 - t1,
                                                 "total_s": t2 - t0}, defended=self.ams is not None)

    @staticmethod
    def _negatives(negative_prompt: str | Sequence[str] | None, n: int) -> list[str]:
        if negative_prompt is None:
            return [""] * n
        if isinstance(negative_prompt, str):
            return [negative_prompt] * n
        if len(negative_prompt) != n:
            raise AmsmoothError(f"{len(negative_prompt)} negative prompts for {n} prompts; give one or one each")
        return list(negative_prompt)
