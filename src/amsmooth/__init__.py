"""amsmooth: Adaptive Median Smoothing for concept-erased text-to-image diffusion models (Han et al., ICML 2025)."""
from .concepts import Concept
from .config import PRESETS, SmoothingConfig, preset
from .encoders import TextEncoder, TokenizedBatch
from .errors import AmsmoothError
from .smoothing import AdaptiveMedianSmoothing, Relevance

__version__ = "0.1.0"
__all__ = ["AdaptiveMedianSmoothing", "AmsmoothError", "Concept", "PRESETS", "Relevance", "SmoothingConfig",
           "TextEncoder", "TokenizedBatch", "preset", "__version__"]
