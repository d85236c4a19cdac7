"""Defended diffusers pipelines, one class per family (SD 1.x/2.x, SDXL, SD3, Flux; txt2img, img2img, inpaint).

Each class *is* the diffusers pipeline with only prompt encoding overridden (:mod:`.mixin`)::

    pipe = DefendedStableDiffusionXLPipeline.from_pipe(sdxl).defend(["nudity"], preset("esd-nudity"))
    image = pipe("a photo", generator=torch.Generator().manual_seed(0)).images[0]

``defended_class(pipe)`` names the class for a loaded pipeline, ``defend_pipeline(pipe, …)`` builds it.
"""
from __future__ import annotations

from .bundle import ConceptBundle
from .defense import FamilyDefense
from .flux import DefendedFluxImg2ImgPipeline, DefendedFluxInpaintPipeline, DefendedFluxPipeline
from .registry import FAMILIES, defend_pipeline, defended_class, family_of, undefended
from .sd import (
                 DefendedStableDiffusionImg2ImgPipeline,
                 DefendedStableDiffusionInpaintPipeline,
                 DefendedStableDiffusionPipeline,
)
from .sd3 import (
                 DefendedStableDiffusion3Img2ImgPipeline,
                 DefendedStableDiffusion3InpaintPipeline,
                 DefendedStableDiffusion3Pipeline,
)
from .sdxl import (
                 DefendedStableDiffusionXLImg2ImgPipeline,
                 DefendedStableDiffusionXLInpaintPipeline,
                 DefendedStableDiffusionXLPipeline,
)

__all__ = ["ConceptBundle", "DefendedFluxImg2ImgPipeline", "DefendedFluxInpaintPipeline", "DefendedFluxPipeline",
           "DefendedStableDiffusion3Img2ImgPipeline", "DefendedStableDiffusion3InpaintPipeline",
           "DefendedStableDiffusion3Pipeline", "DefendedStableDiffusionImg2ImgPipeline",
           "DefendedStableDiffusionInpaintPipeline", "DefendedStableDiffusionPipeline",
           "DefendedStableDiffusionXLImg2ImgPipeline", "DefendedStableDiffusionXLInpaintPipeline",
           "DefendedStableDiffusionXLPipeline", "FAMILIES", "FamilyDefense", "defend_pipeline", "defended_class",
           "family_of", "undefended"]
