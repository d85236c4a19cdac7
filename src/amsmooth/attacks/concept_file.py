"""Ring-A-Bell's own concept vectors (``Concept Vectors/*_vector.npy`` of chiayi-hsu/Ring-A-Bell) as a Concept.

The file is a float array ``[L, D]`` (77 × 768, CLIP ViT-L/14's text encoder, i.e. SD-1.x's). It carries no record
of its encoder, so only its shape is checked against the encoder in use; loading never unpickles
(``allow_pickle=False``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..concepts import Concept
from ..encoders import TextEncoder
from ..errors import AmsmoothError


def load_vector_concept(path: str | Path, encoder: TextEncoder) -> Concept:
    """A Concept from a ``.npy`` direction ``[L, D]``; its name is the file stem (``Nudity_vector`` → ``nudity``)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise AmsmoothError(f"concept vector file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise AmsmoothError(f"{path} is not a plain .npy array ({e})".splitlines()[0]) from None
    array = array.reshape(array.shape[-2:]) if array.ndim == 3 and array.shape[0] == 1 else array
    want = (encoder.max_length, encoder.hidden_size)
    if array.ndim != 2 or tuple(array.shape) != want:
        raise AmsmoothError(f"{path}: concept vector of shape {tuple(array.shape)} does not fit the encoder's "
                            f"[L, D] = {list(want)} (Ring-A-Bell's vectors are for CLIP ViT-L/14, SD-1.x)")
    name = path.stem.lower().removesuffix("_vector")
    return Concept(name, torch.from_numpy(array.astype("float32")), encoder.fingerprint(),
                   meta={"source": str(path)})
