"""Certificate of median smoothing (Lemma 3.1, Theorem 3.2): statistics, the guarantee itself, the CLI."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from amsmooth import AdaptiveMedianSmoothing, SmoothingConfig
from amsmooth.certify import (
    certify,
    diameter_bound,
    lower_index,
    min_samples,
    nearest_token_distances,
    order_statistic_indices,
    percentile_bounds,
    percentile_levels,
    squared_bound,
    typical_token_distance,
    upper_index,
    xi,
)
from amsmooth.cli.main import main
from amsmooth.errors import AmsmoothError

PROMPT = "a photo of a naked woman"


# ---------------------------------------------------------------------- pure statistics
@pytest.mark.parametrize("rho", [0.0, 0.05, 0.5, 1.0, 2.0, 3.5, 6.0])
def test_percentile_levels_match_scipy(rho):
    lo, hi = percentile_levels(rho)
    assert lo == pytest.approx(norm.cdf(-rho), rel=1e-12, abs=1e-300)
    assert hi == pytest.approx(norm.cdf(rho), rel=1e-12)
    assert lo + hi == pytest.approx(1.0, abs=1e-15)


def _tails(n: int, p: float) -> list[Fraction]:
    """P[Bin(n, p) ≥ k] for k = 0..n+1, exactly (rational arithmetic on the binomial sum)."""
    q = Fraction(p)
    pmf = [math.comb(n, j) * q ** j * (1 - q) ** (n - j) for j in range(n + 1)]
    tails = [Fraction(0)] * (n + 2)
    for k in range(n, -1, -1):
        tails[k] = tails[k + 1] + pmf[k]
    return tails


def _brute_upper(n: int, p: float, alpha: float) -> int | None:
    """Smallest k with P[X_(k) < q_p] = P[Bin ≥ k] ≤ alpha."""
    tails = _tails(n, p)
    return next((k for k in range(1, n + 1) if tails[k] <= Fraction(alpha)), None)


def _brute_lower(n: int, p: float, alpha: float) -> int | None:
    """Largest k with P[X_(k) > q_p] = P[Bin ≤ k − 1] ≤ alpha."""
    tails = _tails(n, p)
    ok = [k for k in range(1, n + 1) if 1 - tails[k] <= Fraction(alpha)]
    return ok[-1] if ok else None


@pytest.mark.parametrize("n", [1, 5, 13, 40, 101])
@pytest.mark.parametrize("rho,alpha", [(0.25, 0.1), (1.0, 0.001), (1.0, 0.05), (2.0, 0.01), (0.5, 1e-6)])
def test_order_statistic_indices_match_brute_force(n, rho, alpha):
    p_lo, p_hi = percentile_levels(rho)
    assert upper_index(n, p_hi, alpha) == _brute_upper(n, p_hi, alpha)
    assert lower_index(n, p_lo, alpha) == _brute_lower(n, p_lo, alpha)
    stats = order_statistic_indices(n, rho, 2 * alpha)           # two-sided: alpha per side
    assert (stats.k_lower, stats.k_upper) == (_brute_lower(n, p_lo, alpha), _brute_upper(n, p_hi, alpha))
    if stats.certifiable:                                         # symmetry of the two sides
        assert stats.k_lower == n + 1 - stats.k_upper
        assert stats.k_lower <= stats.k_median <= stats.k_upper


@pytest.mark.parametrize("rho,alpha", [(0.5, 0.001), (1.0, 0.001), (1.0, 1e-8), (2.0, 0.05), (3.0, 0.01)])
def test_min_samples_is_the_first_certifiable_n(rho, alpha):
    n0 = min_samples(rho, alpha)
    assert order_statistic_indices(n0, rho, alpha).certifiable
    assert n0 == 1 or not order_statistic_indices(n0 - 1, rho, alpha).certifiable


def test_huge_radius_needs_astronomical_n():
    """A token swap at σ ≈ 0.03 needs ρ' ≈ 30: n ≈ 10^198 samples; beyond ρ' ≈ 38 no double-precision n exists."""
    n30 = min_samples(30.0, 0.001)
    assert n30 == pytest.approx(math.log(0.0005) / math.log1p(-norm.cdf(-30.0)), rel=1e-9) and n30 > 1e190
    assert min_samples(40.0, 0.001) == math.inf
    assert not order_statistic_indices(10_000, 30.0, 0.001).certifiable


def test_percentile_bounds_are_sorted_samples(generator):
    samples = torch.randn(7, 3, 700, generator=generator)          # crosses the 512-coordinate block
    samples[:, 0, :5] = 1.0                                         # ties
    stats = order_statistic_indices(7, 0.01, 0.999)
    assert stats.k_lower <= stats.k_median <= stats.k_upper
    lo, med, up = percentile_bounds(samples, stats)
    srt = samples.sort(0).values
    for got, k in ((lo, stats.k_lower), (med, stats.k_median), (up, stats.k_upper)):
        assert got.shape == (3, 700) and torch.equal(got, srt[k - 1])


def test_percentile_bounds_refuse_too_few_samples():
    stats = order_statistic_indices(10, 2.0, 0.001)
    assert not stats.certifiable
    with pytest.raises(AmsmoothError, match="too few"):
        percentile_bounds(torch.zeros(10, 4), stats)


def test_bound_formulas():
    med, lo, up = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([0.5, 3.0, 2.0])
    assert xi(med, lo, up).tolist() == [1.0, 4.0, 0.0]              # max of the two squared gaps (no extra square)
    assert squared_bound(med, lo, up) == 5.0
    assert diameter_bound(lo, up) == 1.5 ** 2 + 2.5 ** 2


# ---------------------------------------------------------------------- closed form: a linear "encoder"
def test_linear_encoder_closed_form(generator):
    """h(y) = a ⊙ y + b under G ~ N(0, diag σ²): h(y+G)_i ~ N(h_i, s_i²), s_i = |a_i|σ_i, so the median is h_i,
    the p-percentile h_i + s_i Φ⁻¹(p), and the worst δ with ||δ||_Σ < ρ' moves the median to h_i + ρ' s_i =
    the p̄'-percentile (Theorem 3.2 is tight). Coordinates are independent, so interval misses are binomial
    counts with the exact rate P[Bin(n, p̄') ≥ k_upper] — off-by-one indices would be detected."""
    M, n, rho, alpha = 5000, 201, 0.8, 0.2
    y = torch.randn(M, generator=generator, dtype=torch.float64)
    a = torch.randn(M, generator=generator, dtype=torch.float64) * 3
    b = torch.randn(M, generator=generator, dtype=torch.float64)
    sigma = 0.01 + torch.rand(M, generator=generator, dtype=torch.float64)   # anisotropic Σ
    noise = torch.randn(n, M, generator=generator, dtype=torch.float64) * sigma
    samples = a * (y + noise) + b
    stats = order_statistic_indices(n, rho, alpha)
    lo, med, up = percentile_bounds(samples, stats)
    h, s = (a * y + b).numpy(), (a.abs() * sigma).numpy()
    true_lo, true_up = h + s * norm.ppf(stats.p_lower), h + s * norm.ppf(stats.p_upper)
    worst_up = h + rho * s                                   # median at y + δ*, δ*_i = ρ' σ_i sign(a_i)
    np.testing.assert_allclose(true_up, worst_up, rtol=1e-9)
    for misses, rate in (((up.numpy() < true_up).sum(), binom.sf(stats.k_upper - 1, n, stats.p_upper)),
                         ((lo.numpy() > true_lo).sum(), binom.cdf(stats.k_lower - 1, n, stats.p_lower))):
        assert rate <= alpha / 2
        assert abs(misses - M * rate) <= 4.5 * math.sqrt(M * rate * (1 - rate)) + 1
    z = (med.numpy() - h) / s                                # sample median: unbiased, sd √(π/2)/√n
    assert abs((z > 0).mean() - 0.5) < 4.5 * 0.5 / math.sqrt(M)
    assert z.std() == pytest.approx(math.sqrt(math.pi / 2 / n), rel=0.1)


# ---------------------------------------------------------------------- the driver on the tiny encoder
@pytest.fixture(scope="module")
def tiny_ams(tiny_encoder, tiny_nudity):
    return AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity])


def _smoothed_median(enc, batch, sigma, delta, n, generator):
    """Monte-Carlo E0.5(y + δ) with the certificate's Σ: ``[L, D]``."""
    L, D = sigma.shape[0], enc.hidden_size
    noise = torch.randn((n, L, D), generator=generator) * sigma[None, :, None] + delta
    h = enc.encode_chunked(batch.input_ids.repeat(n, 1), batch.attention_mask.repeat(n, 1), 1024, noise)
    return h.median(0).values


def _gradient(enc, batch, pos, dim, noised):
    """∂h[pos, dim]/∂y at y on the noised positions: ``[L, D]``."""
    e = torch.zeros(1, enc.max_length, enc.hidden_size, requires_grad=True)
    enc.encode_ids(batch.input_ids, batch.attention_mask, e)[0, pos, dim].backward()
    return e.grad[0] * noised[:, None]


def test_guarantee_holds_inside_the_ellipsoid(tiny_ams, tiny_encoder):
    """E0.5(y + δ) stays in [lower, upper] in every coordinate for δ inside and on the ellipsoid ||δ||_Σ = ρ'
    (random and worst-case directions); far outside it (2.5 ρ') the worst-case δ does leave the interval, so
    the check has power. The certificate holds jointly w.p. ≥ 1 − α = 0.99, so no violation is allowed."""
    rho, enc = 1.0, tiny_encoder
    cert, = certify(tiny_ams, [PROMPT], rho, n=1000, alpha=0.01, generator=torch.Generator().manual_seed(0),
                    chunk=500)
    assert cert.status == "certified" and math.isfinite(cert.bound) and cert.bound > 0
    batch = enc.tokenize([PROMPT])
    sigma = tiny_ams.scores(batch).sigma[0]
    noised = sigma > 0
    g = torch.Generator().manual_seed(1)
    tol = 1e-5                                              # float noise of different batch compositions
    outside = lambda m: int(((m < cert.lower - tol) | (m > cert.upper + tol)).sum())  # noqa: E731
    deltas = []
    for r in (0.999, 0.999, 0.999, 0.5, 0.9):             # random directions: on the surface and inside
        u = torch.randn(enc.max_length, enc.hidden_size, generator=g) * noised[:, None]
        deltas.append(r * rho * sigma[:, None] * u / u.norm())
    width = (cert.upper - cert.lower).flatten()
    targets = [divmod(int(i), enc.hidden_size) for i in width.topk(2).indices]
    worst = []
    for pos, dim in targets:                                # worst case for h[pos, dim]: δ ∝ Σ ∇h
        grad = _gradient(enc, batch, pos, dim, noised)
        unit = sigma[:, None] ** 2 * grad / (sigma[:, None] * grad).norm()   # ||unit||_Σ = 1
        worst += [(pos, dim, s * unit) for s in (1, -1)]
        deltas += [0.999 * rho * s * unit for s in (1, -1)]
    for delta in deltas:
        assert math.sqrt(float((delta[noised] ** 2 / sigma[noised, None] ** 2).sum())) < rho
        assert outside(_smoothed_median(enc, batch, sigma, delta, 1001, g)) == 0
    for pos, dim, unit in worst[:2]:                        # control: far outside the ellipsoid
        m = _smoothed_median(enc, batch, sigma, 2.5 * rho * unit, 1001, g)
        assert not cert.lower[pos, dim] <= m[pos, dim] <= cert.upper[pos, dim]


def test_certificate_report(tiny_ams, tiny_encoder):
    cert, = certify(tiny_ams, [PROMPT], 0.5, n=200, alpha=0.001, generator=torch.Generator().manual_seed(0))
    sigma = tiny_ams.scores(tiny_encoder.tokenize([PROMPT])).sigma[0]
    assert [t["position"] for t in cert.tokens] == sigma.nonzero().flatten().tolist()
    for t in cert.tokens:
        assert t["radius"] == pytest.approx(0.5 * t["sigma"]) and t["nearest_token_distance"] > 0
    assert cert.bound <= cert.bound_exact_median                      # centred vs diameter bound
    assert cert.ratio == pytest.approx(cert.bound / float((cert.median.double() ** 2).sum()))
    assert (cert.lower <= cert.median).all() and (cert.median <= cert.upper).all()
    d = json.loads(json.dumps(cert.to_dict()))
    assert d["status"] == "certified" and d["alpha_per_coordinate"] == pytest.approx(0.001 / (77 * 32))


def test_reproducible_with_seed(tiny_ams):
    run = lambda seed: certify(tiny_ams, [PROMPT], 1.0, n=150, alpha=0.01,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed), chunk=40)[0]
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.upper, b.upper) and a.bound == b.bound
    assert a.bound != c.bound
    chunks = []
    certify(tiny_ams, [PROMPT, "a teapot"], 1.0, n=150, alpha=0.01, generator=torch.Generator().manual_seed(3),
            chunk=40, progress=chunks.append)
    assert chunks == [40, 40, 40, 30] * 2                            # progress per chunk, prompt by prompt


def test_too_few_samples_gives_no_bound_without_sampling(tiny_ams, tiny_encoder):
    tiny_ams.scores(tiny_encoder.tokenize([PROMPT]))                   # warm the relevance cache
    rows = tiny_encoder.rows
    cert, = certify(tiny_ams, [PROMPT], 2.0, n=50, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert cert.status == "too-few-samples" and cert.bound == math.inf and cert.lower is None
    assert tiny_encoder.rows == rows                                   # no Monte Carlo was spent
    assert cert.min_samples == min_samples(2.0, 0.001 / (77 * 32)) > 50
    assert cert.to_dict()["bound"] is None
    ok, = certify(tiny_ams, [PROMPT], 2.0, n=cert.min_samples, alpha=0.001,
                  generator=torch.Generator().manual_seed(0))
    assert ok.status == "certified" and math.isfinite(ok.bound)


def test_no_noise_prompt_is_not_certified(tiny_encoder, tiny_nudity):
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(sigma0=0.0))
    empty, zero = certify(ams, ["", PROMPT], 1.0, n=100, alpha=0.01, generator=torch.Generator().manual_seed(0))
    assert empty.status == zero.status == "no-noise"
    assert empty.bound is None and zero.tokens == [] and zero.to_dict()["ratio"] is None


def test_isotropic_case_is_lemma_3_1(tiny_encoder, tiny_nudity):
    """k = 0: Σ = σ0² I on the prompt tokens, the ball of radius ρ = ρ'σ0 of Lemma 3.1 (same code)."""
    sigma0, rho = 0.01, 1.5
    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(sigma0=sigma0, k=0.0))
    cert, = certify(ams, [PROMPT], rho, n=300, alpha=0.01, generator=torch.Generator().manual_seed(0))
    assert cert.status == "certified"
    assert [t["radius"] for t in cert.tokens] == pytest.approx([rho * sigma0] * len(cert.tokens))
    assert math.isfinite(cert.bound) and cert.bound > 0


def test_token_distances(tiny_encoder):
    w = tiny_encoder.embedding.weight
    ids = tiny_encoder.tokenize(["teapot"]).content_ids[0]
    d = nearest_token_distances(w, ids)
    w = w.detach()
    brute = [float(torch.cat([w[:i], w[i + 1:]]).sub(w[i]).norm(dim=1).min()) for i in ids]
    assert d == pytest.approx(brute, rel=1e-4)
    assert min(d) <= typical_token_distance(w) < float(w.norm(dim=1).max()) * 2


@pytest.mark.parametrize("bad", [{"rho": 0.0}, {"rho": math.inf}, {"n": 0}, {"alpha": 1.0}, {"chunk": 0}])
def test_bad_arguments_raise(tiny_ams, bad):
    kw = {"rho": 1.0, "n": 10, "alpha": 0.01, "chunk": 5} | bad
    with pytest.raises(AmsmoothError):
        certify(tiny_ams, [PROMPT], **kw)


# ---------------------------------------------------------------------- CLI
def test_cli_table_and_json(capsys):
    args = ["certify", PROMPT, "", "--encoder", "tiny", "--rho", "1", "--n", "200", "--alpha", "0.01",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bound Σξ" in out and "ratio" in out and "naked" in out and "σ ≡ 0" in out
    assert main(args + ["--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    first, second = doc["results"]
    assert (first["status"], second["status"]) == ("certified", "no-noise")
    assert doc["n"] == 200 and doc["config"]["n"] == 13 and doc["typical_token_distance"] > 0
    assert first["ratio"] == pytest.approx(first["bound"] / first["median_norm_sq"])


def test_cli_too_few_samples_and_errors(capsys):
    assert main(["certify", PROMPT, "--encoder", "tiny", "--rho", "3", "--n", "100", "--no-progress"]) == 0
    assert "no bound (infinite)" in capsys.readouterr().out
    assert main(["certify", PROMPT, "--encoder", "tiny", "--rho", "-1"]) == 2
    assert "rho must be" in capsys.readouterr().err


def test_cli_minilm(minilm_dir, capsys):
    args = ["certify", PROMPT, "--encoder", minilm_dir, "--rho", "0.5", "--n", "101", "--chunk", "101",
            "--format", "json", "--no-progress"]
    assert main(args) == 0
    res, = json.loads(capsys.readouterr().out)["results"]
    assert res["status"] == "certified" and res["bound"] > 0
    assert {t["word"] for t in res["tokens"]} >= {"naked", "woman"}
