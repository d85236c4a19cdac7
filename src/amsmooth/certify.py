"""Certified bounds for (adaptive) median smoothing: Lemma 3.1, Theorem 3.2 and Appendix C of the paper.

With Σ = diag(σ²) on the token embeddings and p̲' = Φ(−ρ'), p̄' = Φ(ρ'), every output coordinate i obeys
E̲_p̲'(y)^i ≤ E0.5(y + δ)^i ≤ Ē_p̄'(y)^i for all ||δ||_Σ = sqrt(δᵀ Σ⁻¹ δ) < ρ' (Theorem 3.2; σ² I gives Lemma 3.1
with ρ' = ρ/σ). The percentiles are estimated from n Monte-Carlo samples by order statistics whose indices come
from the binomial distribution (Chiang et al., 2020); ``certify`` splits α over the L·D output coordinates, so all
intervals of a prompt hold at once with probability ≥ 1 − α. Too few samples for (ρ', α) gives no bound
(infinite), never a guess.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom

from .encoders import TokenizedBatch
from .errors import AmsmoothError


# ---------------------------------------------------------------------- pure statistics
def normal_cdf(x: float) -> float:
    """Φ(x), the standard normal CDF, from the complementary error function (accurate in both tails)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def percentile_levels(rho: float) -> tuple[float, float]:
    """(p̲', p̄') = (Φ(−ρ'), Φ(ρ')): the percentiles bounding E0.5(y + δ) for ||δ||_Σ < ρ' (Theorem 3.2)."""
    return normal_cdf(-rho), normal_cdf(rho)


def upper_index(n: int, p: float, alpha: float) -> int | None:
    """Smallest 1-based k with P[Bin(n, p) ≥ k] ≤ alpha, else None.

    For n i.i.d. draws, X_(k) < q_p needs at least k draws below the p-percentile q_p, and that count is
    Bin(n, ≤ p); so X_(k) ≥ q_p with probability ≥ 1 − alpha.
    """
    ks = np.arange(1, n + 1)
    ok = np.nonzero(binom.sf(ks - 1, n, p) <= alpha)[0]
    return int(ks[ok[0]]) if ok.size else None


def lower_index(n: int, p: float, alpha: float) -> int | None:
    """Largest 1-based k with P[Bin(n, p) ≤ k − 1] ≤ alpha, else None: X_(k) ≤ q_p w.p. ≥ 1 − alpha."""
    ks = np.arange(1, n + 1)
    ok = np.nonzero(binom.cdf(ks - 1, n, p) <= alpha)[0]
    return int(ks[ok[-1]]) if ok.size else None


@dataclass(frozen=True)
class OrderStatistics:
    """Which sorted samples (1-based ranks of n) bound the p̲'/p̄' percentiles; k_lower/k_upper None = no bound."""

    n: int
    rho: float
    alpha: float        # two-sided, per coordinate: each side gets alpha / 2
    p_lower: float
    p_upper: float
    k_lower: int | None
    k_median: int       # the (lower) sample median, the estimate of E0.5(y)
    k_upper: int | None

    @property
    def certifiable(self) -> bool:
        return self.k_lower is not None and self.k_upper is not None


def order_statistic_indices(n: int, rho: float, alpha: float) -> OrderStatistics:
    """Ranks k_lower ≤ k_median ≤ k_upper so that [X_(k_lower), X_(k_upper)] ⊇ [E̲_p̲', Ē_p̄'] w.p. ≥ 1 − alpha."""
    p_lo, p_hi = percentile_levels(rho)
    k_lo, k_hi = lower_index(n, p_lo, alpha / 2), upper_index(n, p_hi, alpha / 2)
    k_med = (n + 1) // 2
    if k_lo is not None and k_hi is not None and not k_lo <= k_med <= k_hi:  # impossible for alpha < 1
        raise AssertionError(f"order statistics out of order: {k_lo}, {k_med}, {k_hi}")
    return OrderStatistics(n, rho, alpha, p_lo, p_hi, k_lo, k_med, k_hi)


def min_samples(rho: float, alpha: float) -> int | float:
    """Smallest n with a bound on both sides: p̄'^n ≤ alpha / 2 (then X_(n) and X_(1) qualify).

    Computed in log space (log p̄' = log1p(−Φ(−ρ')), exact where p̄' rounds to 1); inf when Φ(−ρ') underflows.
    """
    log_p, log_a = math.log1p(-percentile_levels(rho)[0]), math.log(alpha / 2)
    if log_p == 0.0:
        return math.inf
    estimate = log_a / log_p
    if estimate > 2.0 ** 50:        # beyond float resolution of n (or inf): the estimate is the answer
        return estimate
    n = max(1, math.ceil(estimate))
    while n * log_p > log_a:
        n += 1
    while n > 1 and (n - 1) * log_p <= log_a:
        n -= 1
    return n


def percentile_bounds(samples: torch.Tensor, stats: OrderStatistics, block: int = 512
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower, median, upper) order statistics of ``[n, ...]`` samples along axis 0, each ``[...]`` (CPU).

    The values of ``samples.sort(0).values[k - 1]`` for the three ranks, by selection (``np.partition`` on
    blocks of ``block`` coordinates), not a full sort: ~2 s for n = 1000 × 77·768 on two cores.
    """
    if not stats.certifiable:
        raise AmsmoothError(f"n = {stats.n} samples are too few for rho' = {stats.rho}, alpha = {stats.alpha}")
    if samples.shape[0] != stats.n:
        raise AmsmoothError(f"expected {stats.n} samples, got {samples.shape[0]}")
    flat = samples.detach().cpu().reshape(stats.n, -1).numpy()
    ranks = [stats.k_lower - 1, stats.k_median - 1, stats.k_upper - 1]
    picked = np.concatenate([np.partition(flat[:, s:s + block], ranks, axis=0)[ranks]
                             for s in range(0, flat.shape[1], block)], axis=1)
    out = torch.from_numpy(picked).reshape(3, *samples.shape[1:])
    return out[0], out[1], out[2]


def xi(median: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """ξ_i = max((E0.5^i − Ē_p̄'^i)², (E0.5^i − E̲_p̲'^i)²), element-wise (already a square; eq. (6))."""
    m = median.double()
    return torch.maximum((m - upper.double()) ** 2, (m - lower.double()) ** 2)


def squared_bound(median: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Σ_i ξ_i: bounds ||median − E0.5(y + δ)||² for every ||δ||_Σ < ρ' when lower ≤ E0.5(y + δ) ≤ upper."""
    return float(xi(median, lower, upper).sum())


def diameter_bound(lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Σ_i (upper_i − lower_i)²: bounds ||E0.5(y) − E0.5(y + δ)||² for the exact median (both lie inside)."""
    return float(((upper.double() - lower.double()) ** 2).sum())


# ---------------------------------------------------------------------- token geometry
def nearest_token_distances(weight: torch.Tensor, ids: Sequence[int]) -> list[float]:
    """Euclidean distance from each token's embedding to the nearest *other* vocabulary embedding."""
    if not ids:
        return []
    w = weight.detach().float()
    d = torch.cdist(w[list(ids)], w)
    d[torch.arange(len(ids)), torch.tensor(list(ids))] = float("inf")
    return d.min(dim=1).values.tolist()


def typical_token_distance(weight: torch.Tensor, sample: int = 1024) -> float:
    """Median Euclidean distance between two token embeddings (``sample`` evenly spaced vocabulary entries)."""
    w = weight.detach().float()
    ids = torch.linspace(0, w.shape[0] - 1, min(sample, w.shape[0])).round().long().unique()
    d = torch.cdist(w[ids], w[ids])
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


# ---------------------------------------------------------------------- the driver
@dataclass
class PromptCertificate:
    """Certificate of one prompt. status: 'certified', 'too-few-samples' (bound = inf) or 'no-noise'.

    bound = Σ ξ_i around the reported median estimate; bound_exact_median = Σ (U_i − L_i)², valid around the
    exact E0.5(y). Both hold, with probability ≥ 1 − alpha, for every δ with ||δ||_Σ < rho that moves only the
    noised (σ_j > 0) token embeddings. tokens: per prompt token, its σ_j, the radius ρ'·σ_j it may move alone,
    and the distance to its nearest other token embedding. lower/median/upper: ``[L, D]`` (certified only).
    """

    prompt: str
    status: str
    rho: float
    n: int
    alpha: float
    stats: OrderStatistics
    min_samples: int | float        # inf: no n suffices (ρ' beyond double precision)
    tokens: list[dict]
    bound: float | None = None
    bound_exact_median: float | None = None
    median_norm_sq: float | None = None
    max_coordinate_deviation: float | None = None
    seconds: float = 0.0
    lower: torch.Tensor | None = field(default=None, repr=False)
    median: torch.Tensor | None = field(default=None, repr=False)
    upper: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float | None:
        """bound / ||E0.5(y)||²: the certified squared change relative to the conditioning's own size."""
        if self.bound is None or not self.median_norm_sq:
            return None
        return self.bound / self.median_norm_sq

    def to_dict(self) -> dict:
        """JSON-ready: an infinite bound (too few samples) is written as null, with the status saying why."""
        finite = lambda x: x if x is None or math.isfinite(x) else None  # noqa: E731
        s = self.stats
        return {"prompt": self.prompt, "status": self.status, "rho": self.rho, "n": self.n, "alpha": self.alpha,
                "alpha_per_coordinate": s.alpha, "p_lower": s.p_lower, "p_upper": s.p_upper,
                "k_lower": s.k_lower, "k_median": s.k_median, "k_upper": s.k_upper,
                "min_samples": finite(self.min_samples), "bound": finite(self.bound),
                "bound_exact_median": finite(self.bound_exact_median), "median_norm_sq": self.median_norm_sq,
                "ratio": finite(self.ratio), "max_coordinate_deviation": finite(self.max_coordinate_deviation),
                "seconds": round(self.seconds, 3), "tokens": self.tokens}


def _one(batch: TokenizedBatch, b: int) -> TokenizedBatch:
    """Prompt b of a batch as a batch of one."""
    sl = slice(b, b + 1)
    return TokenizedBatch([batch.prompts[b]], batch.input_ids[sl], batch.attention_mask[sl],
                          batch.content_mask[sl], batch.word_index[sl], [batch.tokens[b]],
                          [batch.content_ids[b]], [batch.dropped[b]])


def _token_rows(ams, batch: TokenizedBatch, sigma: torch.Tensor, rho: float) -> list[dict]:  # noqa: ANN001
    """Per noised position (σ_j > 0): token, word, σ_j, radius ρ'·σ_j, nearest-other-token distance."""
    positions = sigma[0].nonzero().flatten().tolist()
    ids = batch.input_ids[0, positions].tolist()
    nearest = nearest_token_distances(ams.encoder.embedding.weight, ids)
    words = {pos: ams.encoder.word_text(batch.input_ids[0, w].tolist()) for w in batch.words(0) for pos in w}
    return [{"position": pos, "token": batch.tokens[0][pos], "word": words.get(pos, ""),
             "sigma": float(sigma[0, pos]), "radius": rho * float(sigma[0, pos]), "nearest_token_distance": d}
            for pos, d in zip(positions, nearest, strict=True)]


def sample_encodings(ams, batch: TokenizedBatch, sigma: torch.Tensor, n: int,  # noqa: ANN001
                     generator: torch.Generator | None, chunk: int,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """n noisy encodings T(y + G), G ~ N(0, diag σ²), of one prompt, drawn ``chunk`` at a time: ``[n, L·D]``."""
    L, D = ams.encoder.max_length, ams.encoder.hidden_size
    out = torch.empty(n, L * D, dtype=torch.float32)
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        out[s:s + c] = ams.noisy_encodings(batch, sigma, c, generator).reshape(c, L * D).float().cpu()
        if progress is not None:
            progress(c)
    return out


def certify_prompt(ams, batch: TokenizedBatch, sigma: torch.Tensor, rho: float, n: int,  # noqa: ANN001
                   alpha: float, generator: torch.Generator | None, chunk: int,
                   progress: Callable[[int], None] | None = None) -> PromptCertificate:
    """Certificate of one prompt (batch of one, σ ``[1, L]``); alpha is split over the L·D coordinates."""
    start = time.perf_counter()
    L, D = ams.encoder.max_length, ams.encoder.hidden_size
    stats = order_statistic_indices(n, rho, alpha / (L * D))     # Bonferroni: all coordinates at once
    cert = PromptCertificate(batch.prompts[0], "certified", rho, n, alpha, stats,
                             min_samples(rho, alpha / (L * D)), _token_rows(ams, batch, sigma, rho))
    if float(sigma.max()) == 0.0:          # no noise: E0.5 = T(y) and the ellipsoid is {0}; nothing to certify
        cert.status = "no-noise"
    elif not stats.certifiable:            # decided before sampling: no n-sample order statistic qualifies
        cert.status, cert.bound, cert.bound_exact_median = "too-few-samples", math.inf, math.inf
    else:
        samples = sample_encodings(ams, batch, sigma, n, generator, chunk, progress)
        lower, median, upper = percentile_bounds(samples, stats)
        cert.bound, cert.bound_exact_median = squared_bound(median, lower, upper), diameter_bound(lower, upper)
        cert.median_norm_sq = float((median.double() ** 2).sum())
        cert.max_coordinate_deviation = float(xi(median, lower, upper).max().sqrt())
        cert.lower, cert.median, cert.upper = (t.reshape(L, D) for t in (lower, median, upper))
    cert.seconds = time.perf_counter() - start
    return cert


def check_arguments(rho: float, n: int, alpha: float, chunk: int) -> None:
    """Raise AmsmoothError for values the certificate is undefined for."""
    if not (math.isfinite(rho) and rho > 0):
        raise AmsmoothError(f"rho must be a finite number > 0 (the radius in the Σ-norm), got {rho}")
    if n < 1:
        raise AmsmoothError(f"n must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise AmsmoothError(f"alpha must lie in (0, 1), got {alpha}")
    if chunk < 1:
        raise AmsmoothError(f"chunk must be >= 1, got {chunk}")


def check_method(method) -> None:  # noqa: ANN001 - a relevance_methods.Method
    """Refuse a relevance method whose σ is not constant over the perturbations the bound covers: Theorem 3.2
    holds for one fixed Σ, and the certificate's δ moves the token embeddings at fixed token ids, so σ may depend
    on the ids (every shipped method) but not on the embedding values (docs/certify.md)."""
    if method.sigma_reads != "token ids":
        raise AmsmoothError(f"relevance {method.name!r} computes σ from {method.sigma_reads}, so σ changes with "
                            "the perturbation δ itself and Theorem 3.2 (a fixed Σ) does not bound the defended "
                            "output: no certificate is reported; use a method whose σ reads token ids only "
                            "(algorithm1, contextual, attribution, subspace, proximity)")


def certify(ams, prompts: Sequence[str], rho: float, n: int = 1000, alpha: float = 0.001,  # noqa: ANN001
            generator: torch.Generator | None = None, chunk: int = 100,
            progress: Callable[[int], None] | None = None) -> list[PromptCertificate]:
    """Certify each prompt's adaptive-median-smoothed conditioning for ||δ||_Σ < rho (Theorem 3.2).

    Σ = diag(σ²) comes from ``ams.scores`` (the prompt's own relevance). With probability ≥ 1 − alpha per
    prompt, every coordinate of E0.5(y + δ) lies in [lower, upper], hence the reported bounds hold. Prompts are
    processed one at a time (an ``[n, L·D]`` float32 buffer each); ``progress(k)`` is called per chunk of k.
    """
    check_arguments(rho, n, alpha, chunk)
    check_method(ams.method)
    batch = ams.encoder.tokenize(list(prompts))
    with torch.no_grad():
        sigma = ams.scores(batch).sigma
    return [certify_prompt(ams, _one(batch, b), sigma[b:b + 1], rho, n, alpha, generator, chunk, progress)
            for b in range(len(batch))]
