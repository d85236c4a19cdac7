"""Build a diffusers Stable Diffusion pipeline from already loaded modules.

A leaf module (it imports nothing of amsmooth): :mod:`amsmooth.loading`, :mod:`amsmooth.models.tiny`, the lab model and
the baselines all assemble pipelines with it, so none of them has to import another to do so.
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any


def assemble_pipeline(cls: type, modules: Mapping[str, Any]):  # noqa: ANN201 - an instance of cls
    """``cls`` (a diffusers SD pipeline class) built from already loaded ``modules``, shared, not copied.

    No safety checker (raw outputs), no progress bar. diffusers raises a U-Net ``sample_size`` below 64 to 64 in
    the constructor, on the shared U-Net's config, which changes the default image size of every pipeline using
    it (the tiny one: 64 px → 128 px); the U-Net's own value is put back.
    """
    accepted = inspect.signature(cls.__init__).parameters
    parts = {k: v for k, v in modules.items() if k in accepted}
    parts.update(safety_checker=None, feature_extractor=None)
    sample_size = parts["unet"].config.sample_size
    with warnings.catch_warnings():  # the warning about that sample_size
        warnings.simplefilter("ignore", FutureWarning)
        pipe = cls(**parts, requires_safety_checker=False)
    pipe.unet.register_to_config(sample_size=sample_size)
    pipe.set_progress_bar_config(disable=True)
    return pipe
