"""SD3: CLIP-L and CLIP-G (penultimate hidden states, concatenated, zero-padded to T5's width) followed by T5's
last hidden state along the sequence ``[B, 77 + max_sequence_length, 4096]``; pooled = both CLIPs' projected
embeddings ``[B, 768 + 1280]``."""
from __future__ import annotations

from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline

from .mixin import DefendedMixin
from .views import EncoderSlot

SD3_SLOTS = (EncoderSlot("clip-l", "text_encoder", "tokenizer", "prompt", "penultimate", converts_ti=False),
             EncoderSlot("clip-g", "text_encoder_2", "tokenizer_2", "prompt_2", "penultimate", converts_ti=False),
             EncoderSlot("t5", "text_encoder_3", "tokenizer_3", "prompt_3", "last", max_length=512,
                         length_arg="max_sequence_length", trim_padding=True, converts_ti=False))


class _SD3Family(DefendedMixin):
    SLOTS = SD3_SLOTS
    OUTPUTS = {0: "prompt_embeds", 2: "pooled_prompt_embeds"}


class DefendedStableDiffusion3Pipeline(_SD3Family, StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` with Adaptive Median Smoothing of CLIP-L, CLIP-G and T5 (``.defend(...)``)."""


class DefendedStableDiffusion3Img2ImgPipeline(_SD3Family, StableDiffusion3Img2ImgPipeline):
    """``StableDiffusion3Img2ImgPipeline`` with Adaptive Median Smoothing."""


class DefendedStableDiffusion3InpaintPipeline(_SD3Family, StableDiffusion3InpaintPipeline):
    """``StableDiffusion3InpaintPipeline`` with Adaptive Median Smoothing."""


CLASSES = {StableDiffusion3Pipeline: DefendedStableDiffusion3Pipeline,
           StableDiffusion3Img2ImgPipeline: DefendedStableDiffusion3Img2ImgPipeline,
           StableDiffusion3InpaintPipeline: DefendedStableDiffusion3InpaintPipeline}
