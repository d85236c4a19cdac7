"""``amsmooth relevance``: per-token relevance and σ (Algorithm 1) as a table or JSON lines."""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from ..relevance import is_high
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
    p = sub.add_parser("relevance", help="score each prompt token's relevance to the concept(s) and its σ")
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument("--prompts-file", help="text file (one prompt a line) or CSV with a 'prompt' column")
    add_encoder_args(p)
    add_concept_args(p)
    add_smoothing_args(p)
    p.add_argument("--format", choices=["table", "jsonl"], default="table")
    p.set_defaults(func=run)


def format_table(result: dict, sigma0: float, color: bool) -> str:
    """One prompt's tokens as an aligned table; high-relevance rows marked with ▲ (and bold on a terminal)."""
    lines = [f"prompt: {result['prompt']}"]
    if result.get("dropped"):
        lines.append(f"  (truncated; dropped: {result['dropped']})")
    lines.append(f"  {'#':>3}  {'word':<18} {'token':<18} {'local':>7} {'global':>7} {'sim':>7} {'sigma':>9}")
    for t in result["tokens"]:
        glb = "-" if t["sim_global"] is None else f"{t['sim_global']:.3f}"
        row = (f"{t['word_index']:>3}  {t['word'][:18]:<18} {t['token'][:18]:<18} {t['sim_local']:>7.3f} "
               f"{glb:>7} {t['sim']:>7.3f} {t['sigma']:>9.5f}")
        high = is_high(t["sigma"], sigma0)
        if high and color:
            row = f"\033[1;31m{row}\033[0m"
        lines.append(("▲ " if high else "  ") + row)
    if not result["tokens"]:
        lines.append("  (empty prompt: nothing to score, no noise)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..models.load import is_family, load_encoder  # lazy: `amsmooth relevance --help` without diffusers

    cases = collect_prompts(args.prompts, args.prompts_file, allow_empty=True)
    config = smoothing_config(args)
    if is_family(args.encoder):
        from .family_relevance import run_family

        return run_family(args, cases, config)
    enc = load_encoder(args.encoder, args.max_length)
    ams = AdaptiveMedianSmoothing(enc, load_concepts(config.concepts, enc), config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ams.relevance([c.prompt for c in cases])
    for w in caught:
        print(f"amsmooth: warning: {w.message}", file=sys.stderr)
    if args.format == "jsonl":
        for r in results:
            r.pop("dropped", None)
            print(json.dumps(r, ensure_ascii=False))
        return 0
    unit = "" if config.sigma_unit == "absolute" else f" ({config.sigma0} embedding std)"
    method = "" if config.relevance == "algorithm1" else f" relevance={config.relevance} (calibrated scale)"
    print(f"concepts: {', '.join(config.concepts)}   σ0={ams.sigma0:.4g}{unit} k={config.k} global={config.use_global}"
          f"{method}"
          f"   ▲ = σ ≥ 2σ0 (sim ≥ {math.log(2) / config.k:.3f})" if config.k else "")
    color = sys.stdout.isatty()
    print("\n\n".join(format_table(r, ams.sigma0, color) for r in results))
    return 0
