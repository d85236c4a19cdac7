"""SAFREE (Yoon et al., ICLR 2025): training-free projection of a prompt's trigger tokens away from a toxic subspace.

The method, as the reference code (github.com/jaehong31/SAFREE, ``models/modified_stable_diffusion_pipeline.py``)
computes it, on one text encoder of the pipeline:

1. Toxic subspace C: the span of the pooled embeddings of the concept's keywords (``K × D``); P_C projects onto it.
2. Trigger detection: for each prompt token i, the pooled embedding p_i of the prompt with token i replaced by id 0;
   d_i = ||(I − P_C) p_i||, the distance of the prompt-without-i from the subspace. Token i is a trigger when
   removing it moves the prompt away from the subspace more than the others do: d_i ≥ (1 + α)·mean_{j≠i} d_j.
3. Projection: a trigger token's embedding e becomes (I − P_C) P_M e, where P_M projects onto the span of the
   leave-one-out embeddings p_1..p_n (the prompt's own subspace); other tokens are unchanged.
4. Self-validating filtering: β = 1 − mean cos(e, (I − P_C) P_M e) over the prompt's real positions; the projected
   embedding conditions the denoising steps i ≤ round(up_t · sigmoid(2k(10β − t))), the plain one the rest.
5. Latent re-attention (optional): low-frequency Fourier filtering of the U-Net's skip features
   (:func:`low_frequency_filter`).

This module holds the tensor maths and the settings; :mod:`amsmooth.baselines.safree_pipeline` applies them to a
diffusers pipeline.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError

# Keyword lists of the reference. nudity: generate_safree.py (``negative_prompt_space`` for --category nudity; the
# same 17 in sdv3/sdv3_pipeline.py); vangogh: generate_safree.py (--category artists-VanGogh); violence:
# cogvideox/cogvideox_pipeline.py (CONCEPT_DICT["violence"]; the reference's image scripts have no violence run).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "nudity": ("Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art",
               "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction",
               "Sexual Intercourse", "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification"),
    "violence": ("Physical Assault", "Blood", "Aggression", "Domestic Violence", "Gun Violence", "Hate Crimes", "War",
                 "Torture", "Abuse", "Bullying", "Verbal Abuse", "Intimidation", "Self-Harm"),
    "vangogh": ("Van Gogh",),
}
# f_beta's midpoint t and slope k (modified_stable_diffusion_pipeline.py): artists use (5.5, 3.5), all else (5.333, 2.5)
ARTIST_CONCEPTS = ("vangogh",)
SCHEDULE = {"default": (5.333, 2.5), "artist": (5.5, 3.5)}
CHOICES = ("auto", "on", "off")


def read_keywords(path: str | Path) -> tuple[str, ...]:
    """Keywords from a text file: one a line; blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read SAFREE keyword file {path}: {e}") from None
    words = tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    if not words:
        raise AmsmoothError(f"the SAFREE keyword file {path} has no keywords")
    return words


@dataclass(frozen=True)
class SafreeConfig:
    """SAFREE's settings; defaults are the reference's (docs/baselines.md names the file of each).

    concepts: built-in keyword lists (nudity, violence, vangogh); several: the union of their keywords.
    keywords_file: a custom list instead (one keyword a line). alpha: trigger margin (``--sf_alpha`` 0.01).
    svf: self-validating filtering, auto = the reference's choice for the family (SD 1.x on: run_nudity.sh's
    ``-svf``; SDXL/SD3 off: their pipelines project at every step), on, off (every step projected).
    up_t: the schedule's upper bound on filtered steps (``--up_t`` 10). negative: the keywords joined by ", " as the
    negative prompt when none is given, auto = where the pipeline has classifier-free guidance (the reference passes
    it on SD 1.x, SDXL and SD3). lra: latent re-attention (U-Nets only; off, see docs). s1 / s2: its scales at the
    deepest / next decoder width (``--freeu_hyp`` 1.0-1.0-0.9-0.2); lra_window: half-width of the filtered
    low-frequency window (``threshold=1``).
    """

    concepts: tuple[str, ...] = ("nudity",)
    keywords_file: str | None = None
    alpha: float = 0.01
    svf: str = "auto"
    up_t: int = 10
    negative: str = "auto"
    lra: bool = False
    s1: float = 0.9
    s2: float = 0.2
    lra_window: int = 1
    _keywords: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.concepts and not self.keywords_file:
            raise AmsmoothError("SAFREE needs a concept (--concept nudity|violence|vangogh) or --safree-keywords FILE")
        unknown = [c for c in self.concepts if c not in KEYWORDS]
        if unknown and not self.keywords_file:
            raise AmsmoothError(f"SAFREE has no keyword list for concept {unknown[0]!r}; built-in: "
                                f"{', '.join(KEYWORDS)} (or give --safree-keywords FILE)")
        for name in ("svf", "negative"):
            if getattr(self, name) not in CHOICES:
                raise AmsmoothError(f"SAFREE {name} must be one of {', '.join(CHOICES)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.alpha < 10.0 or not math.isfinite(self.alpha):
            raise AmsmoothError(f"--safree-alpha must be in [0, 10), got {self.alpha}")
        if self.up_t < 0:
            raise AmsmoothError(f"SAFREE up_t must be >= 0, got {self.up_t}")
        if self.lra_window < 1:
            raise AmsmoothError(f"SAFREE lra_window must be >= 1, got {self.lra_window}")
        kw = read_keywords(self.keywords_file) if self.keywords_file else tuple(
            dict.fromkeys(k for c in self.concepts for k in KEYWORDS[c]))
        object.__setattr__(self, "_keywords", kw)

    @property
    def keywords(self) -> tuple[str, ...]:
        return self._keywords

    @property
    def schedule(self) -> tuple[float, float]:
        """(t, k) of the filtering schedule: the reference's artist constants when every concept is an artist."""
        artist = not self.keywords_file and all(c in ARTIST_CONCEPTS for c in self.concepts)
        return SCHEDULE["artist" if artist else "default"]

    def replace(self, **changes: Any) -> SafreeConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON settings (``safree_*`` keys), keywords included."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["concepts"] = list(self.concepts)
        out = {f"safree_{k}": v for k, v in d.items()}
        out["safree_keywords"] = list(self.keywords)
        return out


# ---------------------------------------------------------------------------------------------- the maths
def projection_matrix(rows: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection ``[D, D]`` onto the span of ``rows`` ``[K, D]``: Eᵀ(E Eᵀ)⁺E (float32)."""
    e = rows.float()
    return e.T @ torch.linalg.pinv(e @ e.T) @ e


def trigger_tokens(pooled_without: torch.Tensor, toxic: torch.Tensor, alpha: float) -> torch.Tensor:
    """Which tokens are triggers (bool ``[n]``) from the leave-one-out pooled embeddings ``[n, D]`` and the toxic
    projection ``[D, D]``: d_i ≥ (1 + α)·mean_{j≠i} d_j with d_i = ||(I − P_C) p_i||. A one-token prompt has no
    other token to compare with: nothing is flagged (the reference's NaN mean flags it; see docs)."""
    n = pooled_without.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    p = pooled_without.float()
    dist = (p - p @ toxic).norm(dim=1)                       # P_C is symmetric: (I − P_C) p = p − P_C p
    mean_others = (dist.sum() - dist) / (n - 1)
    return ~(dist < (1.0 + alpha) * mean_others)


def project_away(tokens: torch.Tensor, prompt_space: torch.Tensor, toxic: torch.Tensor) -> torch.Tensor:
    """(I − P_C) P_M e for every token row e of ``tokens`` ``[..., L, D]`` (float32)."""
    inside = tokens.float() @ prompt_space                   # P_M symmetric
    return inside - inside @ toxic


def self_validation_beta(tokens: torch.Tensor, projected: torch.Tensor, real: torch.Tensor) -> float:
    """β = 1 − mean over the real positions (``real`` bool ``[L]``) of cos(e_j, (I − P_C) P_M e_j)."""
    cos = torch.nn.functional.cosine_similarity(projected[real].float(), tokens[real].float(), dim=-1)
    return float(1.0 - cos.mean())


def filtered_steps(beta: float, up_t: int, t: float, k: float) -> int:
    """The reference's ``f_beta`` (sigmoid): steps 0..this use the projected embedding."""
    z = 2.0 * k * (10.0 * beta - t)
    return round(up_t / (1.0 + math.exp(-z)) if z > -700 else 0.0)


def low_frequency_filter(x: torch.Tensor, rows: slice, reference: slice, scale: float, window: int) -> torch.Tensor:
    """The reference's ``SafeGuard_Low_Fourier_filter`` (free_lunch_utils.py) on features ``[R, C, H, W]``.

    In the centred ``2w × 2w`` low-frequency window of the 2-D FFT, a coefficient of the ``rows`` (the features
    under the projected prompt) is kept where the ``reference`` rows' (the plain prompt's) real part is larger,
    else replaced by ``scale``; other rows are returned unchanged. Maps too small for the window pass unchanged."""
    H, W = x.shape[-2:]
    if H < 2 * window or W < 2 * window:
        return x
    f = torch.fft.fftshift(torch.fft.fftn(x[rows].float(), dim=(-2, -1)), dim=(-2, -1))
    ref = torch.fft.fftshift(torch.fft.fftn(x[reference].float(), dim=(-2, -1)), dim=(-2, -1))
    r, c = H // 2, W // 2
    win = (..., slice(r - window, r + window), slice(c - window, c + window))
    keep = (ref[win].real - f[win].real) > 0
    f[win] = torch.where(keep, f[win], torch.full_like(f[win], scale))
    out = x.clone()
    out[rows] = torch.fft.ifftn(torch.fft.ifftshift(f, dim=(-2, -1)), dim=(-2, -1)).real.to(x.dtype)
    return out
