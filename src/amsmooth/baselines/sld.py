"""SLD baseline (Safe Latent Diffusion, Schramowski et al., 2023) via diffusers' ``StableDiffusionPipelineSafe``.

The four presets are diffusers' own ``SafetyConfig.WEAK/MEDIUM/STRONG/MAX``. The SLD pipeline is built from an
already loaded Stable Diffusion pipeline's modules (shared, not copied), so an unlearned U-Net or text encoder
loaded once serves both.

``StableDiffusionPipelineSafe`` has no ``prompt_embeds=`` argument, which is how Adaptive Median Smoothing
conditions a pipeline. :class:`SLDPipeline` adds it without forking SLD: during one call it wraps the pipeline's
own ``_encode_prompt`` and replaces only the unconditional and conditional blocks of what that method returns
(``[uncond; cond; safety concept]``, each repeated per image), keeping SLD's safety-concept embedding and its
whole denoising loop. With the embeddings of the plain prompt this reproduces plain SLD exactly. AMS on top of
SLD (``from_pipeline(…, ams=config)``) takes those embeddings from the SD family class sharing the same modules
(:class:`amsmooth.pipelines.DefendedStableDiffusionPipeline`), so the smoothing is the one every other command runs.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..concepts import Concept
from ..config import SmoothingConfig
from ..errors import AmsmoothError
from ..models.assembly import assemble_pipeline
from ..pipelines.mixin import execution_device, smoothing_generators, sync
from ..pipelines.registry import defend_pipeline

SLD_PRESETS = ("sld-weak", "sld-medium", "sld-strong", "sld-max")


def sld_preset(name: str) -> dict[str, float]:
    """diffusers' ``SafetyConfig`` preset for ``sld-weak|medium|strong|max`` (the five ``sld_*`` call arguments)."""
    if name not in SLD_PRESETS:
        raise AmsmoothError(f"unknown SLD preset {name!r}; choose one of {', '.join(SLD_PRESETS)}")
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    return dict(getattr(SafetyConfig, name.split("-", 1)[1].upper()))


def safe_pipeline(pipe: Any):  # noqa: ANN201 - StableDiffusionPipelineSafe
    """``StableDiffusionPipelineSafe`` sharing ``pipe``'s modules, without a safety checker (raw outputs)."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    return assemble_pipeline(StableDiffusionPipelineSafe, pipe.components)


@contextlib.contextmanager
def replaced_prompt_encoding(safe: Any, cond: torch.Tensor, negative: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``safe._encode_prompt`` returns ``cond`` / ``negative`` (``[B, L, D]`` each) in place of
    its own conditional / unconditional blocks, repeated per image as SLD repeats them; its safety block stays."""
    original = safe._encode_prompt

    def encode(prompt: Any, device: torch.device, num_images_per_prompt: int, do_classifier_free_guidance: bool,
               negative_prompt: Any, enable_safety_guidance: bool) -> torch.Tensor:
        out = original(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                       enable_safety_guidance)
        n_blocks = 1 + do_classifier_free_guidance + (do_classifier_free_guidance and enable_safety_guidance)
        blocks = list(out.chunk(n_blocks))
        ours = [negative, cond] if do_classifier_free_guidance else [cond]
        for i, embeds in enumerate(ours):
            if embeds is not None:
                blocks[i] = embeds.to(out.device, out.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        return torch.cat(blocks)

    safe._encode_prompt = encode
    try:
        yield
    finally:
        del safe._encode_prompt


# arguments that act only while SLD encodes the prompt itself: with AMS's embeddings they would be dropped silently
UNSUPPORTED = ("clip_skip", "prompt_embeds", "negative_prompt_embeds")


def negatives(negative_prompt: str | Sequence[str] | None, n: int) -> list[str]:
    """One negative prompt per prompt ("" when none is given)."""
    if negative_prompt is None:
        return [""] * n
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    if len(negative_prompt) != n:
        raise AmsmoothError(f"{len(negative_prompt)} negative prompts for {n} prompts; give one or one each")
    return list(negative_prompt)


class SLDPipeline:
    """SLD with one preset, callable like a diffusers SD pipeline, including ``prompt_embeds=`` /
    ``negative_prompt_embeds=`` (``[B, L, D]``). Other attributes (``unet``, ``text_encoder``, ...) are the SLD
    pipeline's. ``defended``: the AMS-defended SD family pipeline that conditions it (None: plain SLD). Calls with
    a prompt return SLD's output with ``relevance``, ``timings`` and ``defended`` added, as the family classes do."""

    def __init__(self, safe: Any, preset: str, defended: Any = None) -> None:
        self.safe = safe
        self.preset_name = preset
        self.preset = sld_preset(preset)
        self.defended = defended

    @classmethod
    def from_pipeline(cls, pipe: Any, preset: str, ams: SmoothingConfig | None = None,
                      concepts: Sequence[str | Concept] | None = None) -> SLDPipeline:
        """SLD sharing ``pipe``'s modules; with ``ams``, conditioned on AMS-smoothed text (the text stage) against
        ``concepts`` (default ``ams.concepts``)."""
        defended = None if ams is None else defend_pipeline(pipe, concepts or ams.concepts, ams, "text")
        return cls(safe_pipeline(pipe), preset, defended)

    def __getattr__(self, name: str) -> Any:
        if name == "safe":
            raise AttributeError(name)
        return getattr(self.safe, name)

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 *, prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 smoothing_generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 **kwargs: Any) -> Any:
        """SLD generation under the preset; with ``prompt_embeds`` the prompt text is a placeholder ("")."""
        if prompt_embeds is not None:
            if prompt is not None:
                raise AmsmoothError("give either prompt or prompt_embeds to the SLD pipeline, not both")
            with replaced_prompt_encoding(self.safe, prompt_embeds, negative_prompt_embeds):
                return self.safe([""] * prompt_embeds.shape[0], **self.preset, **kwargs)
        for name in UNSUPPORTED:
            if kwargs.get(name) is not None:
                raise AmsmoothError(f"{name} is not supported by SLD: its pipeline has no such argument")
        device = execution_device(self.safe)
        sync(device)
        t0 = time.perf_counter()
        if self.defended is None:
            out = self.safe(prompt, negative_prompt=negative_prompt, **self.preset, **kwargs)
            relevance, text_s = [], 0.0
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            if not prompts:
                raise AmsmoothError("no prompts to generate")
            sg = smoothing_generator or smoothing_generators(kwargs.get("generator"), len(prompts))
            cond, neg, relevance, _ = self.defended.conditioning(prompts, negatives(negative_prompt, len(prompts)),
                                                                 sg)
            sync(device)
            text_s = time.perf_counter() - t0
            with replaced_prompt_encoding(self.safe, cond, neg):
                out = self.safe([""] * len(prompts), **self.preset, **kwargs)
        sync(device)
        total = time.perf_counter() - t0
        if not isinstance(out, tuple):                        # attributes, as the family classes add them
            out.relevance, out.defended = relevance, self.defended is not None
            out.timings = {"text_s": text_s, "denoise_decode_s": total - text_s, "total_s": total}
        return out
