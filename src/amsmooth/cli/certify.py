"""``amsmooth certify``: Theorem 3.2's certified bound on the smoothed conditioning, per prompt."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from ..certify import PromptCertificate, certify, check_arguments, typical_token_distance
from ..smoothing import AdaptiveMedianSmoothing
from .common import (
    add_concept_args,
    add_encoder_args,
    add_smoothing_args,
    collect_prompts,
    load_concepts,
    smoothing_config,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certified bound on how far the smoothed conditioning can move "
                                       "(Theorem 3.2)")
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument("--prompts-file", help="text file (one prompt a line) or CSV with a 'prompt' column")
    add_encoder_args(p)
    add_concept_args(p)
    add_smoothing_args(p, with_n=False)
    p.add_argument("--rho", type=float, required=True, metavar="R",
                   help="radius ρ' in the Σ-norm: ||δ||_Σ = sqrt(Σ_j ||δ_j||²/σ_j²) < R")
    p.add_argument("--n", dest="samples", type=int, default=1000, help="Monte-Carlo encodings (default 1000)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="probability that a prompt's certificate is wrong (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--chunk", type=int, default=100, help="encodings per encoder batch (default 100)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def _status_line(c: PromptCertificate) -> list[str]:
    s = c.stats
    if c.status == "no-noise":
        return ["  no certificate: σ ≡ 0 (no noised prompt token), so the smoothed output is T(y) itself and "
                "the ellipsoid ||δ||_Σ < ρ' contains only δ = 0"]
    if c.status == "too-few-samples":
        need = ("no n suffices" if c.min_samples == math.inf else
                f"need n ≥ {c.min_samples}" if isinstance(c.min_samples, int) else f"need n ≥ {c.min_samples:.3g}")
        return [f"  no bound (infinite): n = {c.n} is too few for ρ' = {c.rho} at α = {c.alpha} ({need})"]
    return [f"  bound Σξ = {c.bound:.4e}   ||E0.5(y)||² = {c.median_norm_sq:.4e}   ratio = {c.ratio:.3e}"
            f"   max per-coordinate |Δ| = {c.max_coordinate_deviation:.3e}",
            f"  (around the exact median: Σ(U−L)² = {c.bound_exact_median:.4e}; order statistics "
            f"{s.k_lower} / {s.k_median} / {s.k_upper} of {c.n}; {c.seconds:.2f} s)"]


def format_table(c: PromptCertificate) -> str:
    """One prompt's certificate: the bound, its ratio to ||E0.5(y)||², and the per-token radii."""
    lines = [f"prompt: {c.prompt}"] + _status_line(c)
    if c.tokens:
        lines.append("  each token's embedding may move alone by its radius ρ'·σ_j (together: Σ_j ||δ_j||²/σ_j²"
                     " < ρ'²)")
        lines.append(f"  {'pos':>4}  {'word':<16} {'token':<16} {'sigma':>9} {'radius':>9} {'nearest':>9}")
        for t in c.tokens:
            lines.append(f"  {t['position']:>4}  {t['word'][:16]:<16} {t['token'][:16]:<16} {t['sigma']:>9.5f} "
                         f"{t['radius']:>9.5f} {t['nearest_token_distance']:>9.4f}")
    return "\n".join(lines)


def _progress(total: int, disable: bool):  # noqa: ANN202 - a tqdm bar
    from tqdm import tqdm

    return tqdm(total=total, unit="enc", desc="certify", file=sys.stderr, disable=disable, leave=False)


def run(args: argparse.Namespace) -> int:
    from ..models.load import load_encoder  # lazy: `amsmooth certify --help` without diffusers

    check_arguments(args.rho, args.samples, args.alpha, args.chunk)
    cases = collect_prompts(args.prompts, args.prompts_file, allow_empty=True)
    config = smoothing_config(args)
    enc = load_encoder(args.encoder, args.max_length)
    ams = AdaptiveMedianSmoothing(enc, load_concepts(config.concepts, enc), config)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with _progress(args.samples * len(cases), args.no_progress) as bar:
        certs = certify(ams, [c.prompt for c in cases], args.rho, args.samples, args.alpha, generator,
                        args.chunk, bar.update)
    seconds = time.perf_counter() - start
    typical = typical_token_distance(enc.embedding.weight)
    if args.format == "json":
        print(json.dumps({"rho": args.rho, "n": args.samples, "alpha": args.alpha, "seed": args.seed,
                          "chunk": args.chunk, "config": config.to_dict(), "encoder": enc.fingerprint(),
                          "typical_token_distance": typical, "seconds": round(seconds, 3),
                          "results": [c.to_dict() for c in certs]}, ensure_ascii=False, indent=1))
        return 0
    print(f"certificate for ||δ||_Σ < ρ' = {args.rho} with probability ≥ 1 − {args.alpha} per prompt "
          f"(n = {args.samples}, seed {args.seed}); concepts: {', '.join(config.concepts)}, σ0 = {config.sigma0}, "
          f"k = {config.k}, global = {config.use_global}, relevance = {config.relevance}")
    print(f"typical distance between two token embeddings of this encoder: {typical:.4f}; 'nearest' = distance "
          f"from the token to its nearest other token")
    print("\n\n".join(format_table(c) for c in certs))
    print(f"\ntotal {seconds:.2f} s")
    return 0
