"""SDXL: CLIP ViT-L and OpenCLIP bigG, penultimate hidden states concatenated ``[B, 77, 768 + 1280]``, plus
bigG's pooled (projected) embedding ``[B, 1280]`` for the U-Net's added conditioning."""
from __future__ import annotations

from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

from .mixin import DefendedMixin
from .views import EncoderSlot

SDXL_SLOTS = (EncoderSlot("clip-l", "text_encoder", "tokenizer", "prompt", "penultimate"),
              EncoderSlot("clip-g", "text_encoder_2", "tokenizer_2", "prompt_2", "penultimate"))


class _SDXLFamily(DefendedMixin):
    SLOTS = SDXL_SLOTS
    OUTPUTS = {0: "prompt_embeds", 2: "pooled_prompt_embeds"}


class DefendedStableDiffusionXLPipeline(_SDXLFamily, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with Adaptive Median Smoothing of both text encoders (``.defend(...)``)."""


class DefendedStableDiffusionXLImg2ImgPipeline(_SDXLFamily, StableDiffusionXLImg2ImgPipeline):
    """``StableDiffusionXLImg2ImgPipeline`` with Adaptive Median Smoothing (the refiner: bigG only)."""


class DefendedStableDiffusionXLInpaintPipeline(_SDXLFamily, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` with Adaptive Median Smoothing."""


CLASSES = {StableDiffusionXLPipeline: DefendedStableDiffusionXLPipeline,
           StableDiffusionXLImg2ImgPipeline: DefendedStableDiffusionXLImg2ImgPipeline,
           StableDiffusionXLInpaintPipeline: DefendedStableDiffusionXLInpaintPipeline}
