"""Evaluation the way the paper does it: detectors (NudeNet, Q16), utility metrics (FID, CLIP score), a resumable
results store per run directory, and the Table 1 / Table 2 report."""
from .detectors import Detection, NudeNetDetector, Q16Detector, make_detector
from .metrics import FID, ClipScore, FeatureStats, InceptionFeatures, frechet_distance
from .store import ImageResult, Metric, ResultStore

__all__ = ["ClipScore", "Detection", "FID", "FeatureStats", "ImageResult", "InceptionFeatures", "Metric",
           "NudeNetDetector", "Q16Detector", "ResultStore", "frechet_distance", "make_detector"]
