"""Compatibility names from before issue 25 (one defended pipeline): the defended pipelines are the diffusers
subclasses of :mod:`amsmooth.pipelines`, one per family, built by :func:`amsmooth.pipelines.defend_pipeline`.

``DefendedPipeline.from_pipeline(pipe, concepts, config, stage)`` is kept for code written against the old
wrapper's README example; it returns the family class (as it did since the families landed). The wrapper itself
(``DefendedPipeline(pipe, ams)``) is gone: use ``undefended(pipe)`` or ``defend_pipeline(pipe, …)``.
"""
from __future__ import annotations

from typing import Any

from .errors import AmsmoothError
from .pipelines.mixin import derive_generator, execution_device, smoothing_generators
from .pipelines.registry import defend_pipeline
from .pipelines.unet_stage import STAGES, unet_median_smoothing

__all__ = ["STAGES", "DefendedPipeline", "derive_generator", "execution_device", "smoothing_generators",
           "unet_median_smoothing"]


class DefendedPipeline:
    """Compatibility alias: ``from_pipeline`` is :func:`amsmooth.pipelines.defend_pipeline`."""

    from_pipeline = staticmethod(defend_pipeline)

    def __new__(cls, *args: Any, **kwargs: Any) -> DefendedPipeline:
        raise AmsmoothError("the DefendedPipeline wrapper was removed (issue 25): use "
                            "amsmooth.pipelines.undefended(pipe) or defend_pipeline(pipe, concepts, config)")
