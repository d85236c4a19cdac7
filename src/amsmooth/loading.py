"""The public loading names of the README and docs/loading.md (``from amsmooth.loading import load_pipeline``):
a re-export of :mod:`amsmooth.models.load`, the one loader (every family, named models, unlearned weights)."""
from __future__ import annotations

from .models.assembly import assemble_pipeline
from .models.load import (
    default_steps,
    family_encoder,
    family_of_source,
    is_family,
    load_encoder,
    load_family_pipeline,
    load_family_views,
    load_pipeline,
    load_transformer_weights,
    pipeline_class,
    resolve_device,
)
from .models.weights import apply_state_dict, load_text_encoder_weights, load_unet_weights, read_state_dict, source_kind

__all__ = ["apply_state_dict", "assemble_pipeline", "default_steps", "family_encoder", "family_of_source",
           "is_family", "load_encoder", "load_family_pipeline", "load_family_views", "load_pipeline",
           "load_text_encoder_weights", "load_transformer_weights", "load_unet_weights", "pipeline_class",
           "read_state_dict", "resolve_device", "source_kind"]
