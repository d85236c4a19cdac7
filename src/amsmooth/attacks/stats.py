"""Bootstrap confidence intervals for attack summaries and paired comparisons (percentile bootstrap, seeded)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import AmsmoothError


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile-bootstrap confidence interval over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap_mean(values: Sequence[float] | torch.Tensor, resamples: int = 10000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Mean of ``values`` ``[N]`` with a percentile bootstrap CI (``resamples`` draws from a generator seeded by
    ``seed``: same values and seed, same interval)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise AmsmoothError("no values to summarize")
    if not 0 < level < 1:
        raise AmsmoothError(f"level must be in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(x.numel(), (resamples, x.numel()), generator=g)
    means = x[idx].mean(1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Interval(float(x.mean()), low, high, int(x.numel()), level)


def paired_difference(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor,
                      resamples: int = 10000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of the per-item differences a_i − b_i with a bootstrap CI over items (a and b paired by position)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise AmsmoothError(f"paired values differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return bootstrap_mean(a - b, resamples, level, seed)
