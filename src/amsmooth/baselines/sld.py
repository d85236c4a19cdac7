"""SLD baseline (Safe Latent Diffusion, Schramowski et al., 2023) via diffusers' ``StableDiffusionPipelineSafe``.

The four presets are diffusers' own ``SafetyConfig.WEAK/MEDIUM/STRONG/MAX``. The SLD pipeline is built from an
already loaded Stable Diffusion pipeline's modules (shared, not copied), so an unlearned U-Net or text encoder
loaded once serves both.

``StableDiffusionPipelineSafe`` has no ``prompt_embeds=`` argument, which is how Adaptive Median Smoothing
conditions a pipeline. :class:`SLDPipeline` adds it without forking SLD: during one call it wraps the pipeline's
own ``_encode_prompt`` and replaces only the unconditional and conditional blocks of what that method returns
(``[uncond; cond; safety concept]``, each repeated per image), keeping SLD's safety-concept embedding and its
whole denoising loop. With the embeddings of the plain prompt this reproduces plain SLD exactly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import AmsmoothError

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

    from ..assembly import assemble_pipeline

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


class SLDPipeline:
    """SLD with one preset, callable like a diffusers SD pipeline, including ``prompt_embeds=`` /
    ``negative_prompt_embeds=`` (``[B, L, D]``). Other attributes (``unet``, ``text_encoder``, ...) are the SLD
    pipeline's, so :class:`amsmooth.pipeline.DefendedPipeline` can wrap it."""

    def __init__(self, safe: Any, preset: str) -> None:
        self.safe = safe
        self.preset_name = preset
        self.preset = sld_preset(preset)

    @classmethod
    def from_pipeline(cls, pipe: Any, preset: str) -> SLDPipeline:
        return cls(safe_pipeline(pipe), preset)

    def __getattr__(self, name: str) -> Any:
        if name == "safe":
            raise AttributeError(name)
        return getattr(self.safe, name)

    def __call__(self, prompt: str | list[str] | None = None, *, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """SLD generation under the preset; with ``prompt_embeds`` the prompt text is a placeholder ("")."""
        if prompt_embeds is None:
            return self.safe(prompt, **self.preset, **kwargs)
        if prompt is not None:
            raise AmsmoothError("give either prompt or prompt_embeds to the SLD pipeline, not both")
        with replaced_prompt_encoding(self.safe, prompt_embeds, negative_prompt_embeds):
            return self.safe([""] * prompt_embeds.shape[0], **self.preset, **kwargs)
