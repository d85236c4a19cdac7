"""User-supplied CLIP weights (Q16 detector, CLIP score): loading with a clear offline error, projected features.

amsmooth ships no CLIP weights. ``source`` is a Hugging Face id (needs the network or the HF cache) or a local
folder holding a transformers CLIP checkpoint, e.g. ``openai/clip-vit-large-patch14`` (ViT-L/14, the paper's).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AmsmoothError

ImageLike = Image.Image | np.ndarray | str | Path  # an RGB image, an [H, W, 3] uint8 array, or a file path

CLIP_HINT = ("give a local folder with a transformers CLIP checkpoint (e.g. download openai/clip-vit-large-patch14 "
             "with `hf download` on a machine with internet) or a Hugging Face id while online")


def _load(what: str, loader, source: str, **kwargs: Any):  # noqa: ANN001, ANN202 - a transformers class / model
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise AmsmoothError(f"cannot load {what}: no such folder {source}; {CLIP_HINT}")
    try:
        return loader(str(Path(source).expanduser()) if source.startswith("~") else source, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AmsmoothError(f"cannot load {what} from {source!r} ({first[:160]}); {CLIP_HINT}") from None


def load_clip(source: str, device: str | torch.device | None = None):  # noqa: ANN201 - (CLIPModel, CLIPProcessor)
    """Full CLIP (image and text towers) and its processor, for the CLIP score."""
    from transformers import CLIPModel, CLIPProcessor

    model = _load("CLIP weights", CLIPModel.from_pretrained, source)
    processor = _load("the CLIP processor", CLIPProcessor.from_pretrained, source)
    return model.to(device or "cpu").eval(), processor


def load_clip_vision(source: str, device: str | torch.device | None = None):  # noqa: ANN201
    """CLIP image tower with its projection and the image processor: a full CLIP checkpoint loads as
    ``CLIPModel`` (its vision config alone may lack the projection size), a vision-only one as
    ``CLIPVisionModelWithProjection``."""
    from transformers import AutoConfig, AutoImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    config = _load("the CLIP config", AutoConfig.from_pretrained, source)
    cls = CLIPModel if config.model_type == "clip" else CLIPVisionModelWithProjection
    model = _load("CLIP vision weights", cls.from_pretrained, source)
    processor = _load("the CLIP image processor", AutoImageProcessor.from_pretrained, source)
    return model.to(device or "cpu").eval(), processor


@torch.no_grad()
def image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features ``[B, P]`` (OpenAI CLIP's ``encode_image``) of ``CLIPModel`` or
    ``CLIPVisionModelWithProjection``; independent of the transformers version's ``get_image_features`` output."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return model.visual_projection(pooled)


@torch.no_grad()
def text_features(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected text features ``[B, P]`` (OpenAI CLIP's ``encode_text``) of a ``CLIPModel``."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return model.text_projection(pooled)


def as_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image, an ``[H, W, 3]`` uint8 RGB array or a path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise AmsmoothError(f"cannot read image {image}: {e}") from None


class ClipImageEncoder:
    """Images → projected CLIP image features ``[B, P]``; the model and processor are injectable (tests)."""

    def __init__(self, model: torch.nn.Module, processor) -> None:  # noqa: ANN001
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, source: str, device: str | torch.device | None = None) -> ClipImageEncoder:
        return cls(*load_clip_vision(source, device))

    @property
    def dim(self) -> int:
        return int(self.model.visual_projection.out_features)

    def __call__(self, images: Sequence[ImageLike]) -> torch.Tensor:
        param = next(self.model.parameters())
        pixels = self.processor(images=[as_pil(im) for im in images], return_tensors="pt")["pixel_values"]
        return image_features(self.model, pixels.to(param.device, param.dtype)).float()
