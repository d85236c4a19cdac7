"""Stable Diffusion 1.x/2.x: one CLIP text encoder, last hidden state ``[B, 77, 768|1024]``."""
from __future__ import annotations

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from ..smoothing import AdaptiveMedianSmoothing
from .mixin import CallState, DefendedMixin
from .views import EncoderSlot, EncoderView

SD_SLOTS = (EncoderSlot("clip", "text_encoder", "tokenizer", "prompt", "last"),)


class _SDFamily(DefendedMixin):
    SLOTS = SD_SLOTS
    OUTPUTS = {0: "prompt_embeds"}
    UNET_STAGE = True

    # single-encoder conveniences (encoder, ams, conditioning): SLD and the tests read them
    @property
    def encoder(self) -> EncoderView:
        """The text encoder as AMS sees it (tokenize / encode ``[B, 77, D]``)."""
        return self._ams.views[0] if self._ams is not None else self.encoder_views()[0]

    @property
    def ams(self) -> AdaptiveMedianSmoothing | None:
        """The single-encoder :class:`AdaptiveMedianSmoothing` (relevance, noisy encodings, smooth)."""
        return None if self._ams is None else self._ams.ams[self._ams.views[0].slot.name]

    def conditioning(self, prompts: list[str], negative: list[str],
                     smoothing_generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, list[dict],
                                                                            None]:
        """(cond ``[B, 77, D]``, negative ``[B, 77, D]``, relevance per prompt, None) — text stage."""
        self._ams_call = CallState(smoothing_generator)
        try:
            cond, neg = self.encode_prompt(list(prompts), self._execution_device, 1, True, list(negative))
            return cond, neg, self._ams_call.relevance, None
        finally:
            self._ams_call = None


class DefendedStableDiffusionPipeline(_SDFamily, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` with Adaptive Median Smoothing of its text conditioning (``.defend(...)``)."""


class DefendedStableDiffusionImg2ImgPipeline(_SDFamily, StableDiffusionImg2ImgPipeline):
    """``StableDiffusionImg2ImgPipeline`` with Adaptive Median Smoothing."""


class DefendedStableDiffusionInpaintPipeline(_SDFamily, StableDiffusionInpaintPipeline):
    """``StableDiffusionInpaintPipeline`` with Adaptive Median Smoothing."""


CLASSES = {StableDiffusionPipeline: DefendedStableDiffusionPipeline,
           StableDiffusionImg2ImgPipeline: DefendedStableDiffusionImg2ImgPipeline,
           StableDiffusionInpaintPipeline: DefendedStableDiffusionInpaintPipeline}
