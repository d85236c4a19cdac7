"""Flux: CLIP-L's pooled output ``[B, 768]`` and T5's last hidden state ``[B, max_sequence_length, 4096]``.

Flux encodes a true-CFG negative prompt with a second ``encode_prompt`` call; only the first call of a pipeline
call is smoothed, so negatives stay plain as in every other family."""
from __future__ import annotations

from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline

from .mixin import DefendedMixin
from .views import EncoderSlot

FLUX_SLOTS = (EncoderSlot("clip-l", "text_encoder", "tokenizer", "prompt", "pooled"),
              EncoderSlot("t5", "text_encoder_2", "tokenizer_2", "prompt_2", "last", max_length=512,
                          length_arg="max_sequence_length", trim_padding=True))


class _FluxFamily(DefendedMixin):
    SLOTS = FLUX_SLOTS
    OUTPUTS = {0: "prompt_embeds", 1: "pooled_prompt_embeds"}
    CFG_ARG = None


class DefendedFluxPipeline(_FluxFamily, FluxPipeline):
    """``FluxPipeline`` with Adaptive Median Smoothing of CLIP-L (pooled) and T5 (``.defend(...)``)."""


class DefendedFluxImg2ImgPipeline(_FluxFamily, FluxImg2ImgPipeline):
    """``FluxImg2ImgPipeline`` with Adaptive Median Smoothing."""


class DefendedFluxInpaintPipeline(_FluxFamily, FluxInpaintPipeline):
    """``FluxInpaintPipeline`` with Adaptive Median Smoothing."""


CLASSES = {FluxPipeline: DefendedFluxPipeline, FluxImg2ImgPipeline: DefendedFluxImg2ImgPipeline,
           FluxInpaintPipeline: DefendedFluxInpaintPipeline}
