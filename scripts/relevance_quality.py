"""Relevance quality per method: token-level AUROC against benign tokens, per lab lexicon, and e^{k·sim}.

    python scripts/relevance_quality.py [--encoder lab minilm] [--methods algorithm1 contextual ...]
        [--concept nudity] [--n 40] [--split-seed 1] [--attack NAME=CSV ...] [--k 9] [--json OUT]

Prints one Markdown table (``amsmooth.relevance_quality.format_rows``). The reported split is the lab table's
(``--split-seed 1``); the methods' settings were chosen on the violence concept's lexicons and the calibration
split (seed 0), never on the rows this prints for nudity (docs/method.md).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

from amsmooth.concepts import resolve_concept
from amsmooth.config import RELEVANCE_METHODS, SmoothingConfig
from amsmooth.lab.token_classes import lab_relevance_quality
from amsmooth.loading import load_encoder
from amsmooth.relevance_quality import format_rows
from amsmooth.smoothing import AdaptiveMedianSmoothing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", nargs="+", default=["lab", "minilm"])
    p.add_argument("--methods", nargs="+", default=list(RELEVANCE_METHODS), choices=RELEVANCE_METHODS)
    p.add_argument("--concept", default="nudity")
    p.add_argument("--n", type=int, default=40, help="prompts per lexicon and benign (default 40)")
    p.add_argument("--split-seed", type=int, default=1)
    p.add_argument("--attack", action="append", default=[], metavar="NAME=CSV")
    p.add_argument("--k", type=float, default=9.0)
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args()
    attacks = [tuple(a.split("=", 1)) for a in args.attack]
    rows = []
    warnings.simplefilter("ignore")
    for source in args.encoder:
        enc = load_encoder(source, None)
        concept = resolve_concept(args.concept, enc)
        for name in args.methods:
            start = time.perf_counter()
            ams = AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(relevance=name, k=args.k,
                                                                          concepts=(args.concept,)))
            got = lab_relevance_quality(ams, args.concept, args.n, args.split_seed, attacks, encoder_name=source)
            rows += got
            print(f"{source} {name}: {time.perf_counter() - start:.0f} s", flush=True)
            print(format_rows(got), flush=True)
    print()
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
