"""amsmooth: Adaptive Median Smoothing for concept-erased text-to-image diffusion models (Han et al., ICML 2025).

The public names below are imported on first use (PEP 562), not when the package is: ``import amsmooth.errors``
or the command line's ``--help`` must not pay for torch (issue 28: start-up speed, not an import circle).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .concepts import Concept
    from .config import PRESETS, SmoothingConfig, preset
    from .encoders import TextEncoder, TokenizedBatch
    from .errors import AmsmoothError
    from .smoothing import AdaptiveMedianSmoothing, Relevance

__version__ = "0.1.0"
_HOME = {"AdaptiveMedianSmoothing": "smoothing", "AmsmoothError": "errors", "Concept": "concepts",
         "PRESETS": "config", "Relevance": "smoothing", "SmoothingConfig": "config", "TextEncoder": "encoders",
         "TokenizedBatch": "encoders", "preset": "config"}
__all__ = ["AdaptiveMedianSmoothing", "AmsmoothError", "Concept", "PRESETS", "Relevance", "SmoothingConfig",
           "TextEncoder", "TokenizedBatch", "preset", "__version__"]


def __getattr__(name: str) -> Any:
    """``amsmooth.SmoothingConfig`` and friends: the module that defines the name, imported now."""
    if name not in _HOME:
        raise AttributeError(f"module 'amsmooth' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
