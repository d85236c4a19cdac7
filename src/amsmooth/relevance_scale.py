"""The calibrated relevance scale: one σ0 and k mean the same for every method and encoder.

A method's raw scores have their own units (a cosine, a gradient product, a projection norm). They are mapped
per encoder and concept by what the method gives the tokens of fixed neutral prompts (64 COCO captions,
``data/relevance/neutral_prompts.txt``):

    s = clamp((raw − m) / (q − m) · UNIT, −1, 1),   m = median, q = 99th percentile of the neutral tokens' raw scores

so a typical neutral token gets s = 0 (σ = σ0), a token as high as the top 1 % of neutral tokens gets s = UNIT
(σ = σ0·e^{k·UNIT}: 2.5 × at k = 9), and the clamp keeps |s| ≤ 1, so config.SIGMA_MAX's bound σ ≤ σ0·e^|k|
still holds. The measurement is deterministic (no random draw); it is cached in memory and on disk under the
amsmooth cache dir, keyed by the method, the encoder's fingerprint and the concept direction's bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .io import atomic_write_bytes, cache_dir

if TYPE_CHECKING:
    from .encoders import TextEncoder
    from .relevance_methods import Method, RelevanceContext

UNIT = 0.1          # calibrated score of the neutral tokens' 99th percentile
QUANTILE = 0.99
VERSION = 1         # bump when the measurement changes (invalidates the disk cache)


@dataclass(frozen=True)
class Scale:
    """Per concept: the neutral tokens' median ``m`` and 99th percentile ``q`` of a method's raw scores."""

    median: tuple[float, ...]
    q99: tuple[float, ...]

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Calibrated scores of raw ``[..., C]``: clamp((raw − m)/(q − m)·UNIT, −1, 1)."""
        m = torch.tensor(self.median, dtype=torch.float32)
        spread = (torch.tensor(self.q99, dtype=torch.float32) - m).clamp_min(1e-12)
        return ((raw.float() - m) / spread * UNIT).clamp(-1.0, 1.0)


def neutral_prompts() -> list[str]:
    """The calibration's neutral prompts (64 COCO captions, one a line)."""
    path = Path(str(resources.files("amsmooth") / "data" / "relevance" / "neutral_prompts.txt"))
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def neutral_words(encoder: TextEncoder | None = None) -> list[str]:
    """The distinct lower-case words of the neutral prompts, in order of first use."""
    return list(dict.fromkeys(w for p in neutral_prompts() for w in re.findall(r"[a-z]+", p.lower())))


def _cache_path(method: Method, ctx: RelevanceContext) -> Path:
    h = hashlib.sha256(json.dumps([VERSION, method.name, ctx.encoder.fingerprint()],
                                  sort_keys=True).encode())
    for d in ctx.directions:
        h.update(d.float().cpu().contiguous().numpy().tobytes())
    return cache_dir() / "relevance" / f"{method.name}-{h.hexdigest()[:16]}.json"


def measure(method: Method, ctx: RelevanceContext) -> Scale:
    """Score every prompt token of the neutral prompts with ``method`` and take, per concept, the median and the
    99th percentile."""
    batch = ctx.encoder.tokenize(neutral_prompts())
    with torch.no_grad():
        raw = method.fn(ctx, batch).local                      # [B, L, C]
    tokens = raw[batch.content_mask]                           # [T, C]
    return Scale(tuple(float(v) for v in tokens.median(0).values),
                 tuple(float(v) for v in torch.quantile(tokens.double(), QUANTILE, dim=0)))


def scale_for(method: Method, ctx: RelevanceContext) -> Scale:
    """The method's scale for this encoder and these concepts: from ``ctx.state``, the disk cache, or measured
    (and cached)."""
    if "scale" in ctx.state:
        return ctx.state["scale"]
    path = _cache_path(method, ctx)
    scale = None
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            scale = Scale(tuple(d["median"]), tuple(d["q99"]))
        except (OSError, ValueError, KeyError, TypeError):
            scale = None                                       # a broken cache entry is measured again
    if scale is None:
        scale = measure(method, ctx)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps({"method": method.name, "median": scale.median,
                                                 "q99": scale.q99}).encode())
        except OSError:
            pass                                               # an unwritable cache costs a re-measurement
    ctx.state["scale"] = scale
    return scale
