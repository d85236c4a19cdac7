"""Named models (``--model tiny``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``, ``lab``): their family and where each
is built. The loader finds a named model here and imports its module only when that model is loaded
(``importlib``), so it does not import what it loads: the lab model lives with the lab (``amsmooth.lab.model``),
a layer above the loader.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NamedModel:
    """``module``'s ``pipeline`` builds it, ``encoder`` its text encoder (a ``TextEncoder``), ``steps`` names its
    default denoising steps (None: the paper's 50)."""

    family: str                     # sd, sdxl, sd3, flux
    module: str
    pipeline: str
    encoder: str | None = None
    steps: str | None = None

    def attr(self, name: str) -> Any:
        """An attribute of the module that builds this model (the module is imported now)."""
        return getattr(importlib.import_module(self.module), name)


NAMED_MODELS = {
    "tiny": NamedModel("sd", "amsmooth.models.tiny", "tiny_pipeline", "tiny_text_encoder"),
    "tiny-sdxl": NamedModel("sdxl", "amsmooth.models.tiny", "tiny_family_pipeline"),
    "tiny-sd3": NamedModel("sd3", "amsmooth.models.tiny", "tiny_family_pipeline"),
    "tiny-flux": NamedModel("flux", "amsmooth.models.tiny", "tiny_family_pipeline"),
    "lab": NamedModel("sd", "amsmooth.lab.model", "lab_pipeline", "lab_text_encoder", "LAB_STEPS"),
}
DEFAULT_STEPS = 50   # the paper's


def named_model(name: str) -> NamedModel | None:
    """The named model called ``name``, or None (a Hub id, a folder or a file)."""
    return NAMED_MODELS.get(name)
