"""``amsmooth eval``: robustness of a defense as the paper measures it — every case of every prompt set generated
per the data contract, scored by a detector, one row per image in RUN_DIR (resumable, shardable)."""
from __future__ import annotations

import argparse
import sys

from ..eval.session import DetectorSpec, evaluate
from .model_options import add_generation_args, add_model_args
from .runs import add_defense_args, add_run_args, report_progress, run_request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="attack success rate of a defense on prompt sets (detector-scored, "
                                    "resumable, shardable with accelerate launch)")
    add_model_args(p)
    add_defense_args(p)
    add_run_args(p)
    p.add_argument("--detector", required=True, metavar="NAME",
                   help="nudenet, q16, or lab-nudity / lab-violence (the lab model's readers)")
    p.add_argument("--threshold", type=float, help="detector threshold (nudenet 0.6, q16 0.5)")
    p.add_argument("--detector-class", action="append", dest="detector_classes", metavar="CLASS",
                   help="NudeNet class that flags an image (repeat; default: the paper's nine exposed classes)")
    p.add_argument("--q16-clip", metavar="SRC", help="CLIP ViT-L/14 for q16 (Hugging Face id or local folder)")
    add_generation_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request = run_request(args)
    detector = DetectorSpec(args.detector, args.threshold,
                            tuple(args.detector_classes) if args.detector_classes else None, args.q16_clip)
    counts = evaluate(request, detector, on_run=lambda run, stats: report_progress("eval", run, stats))
    for name, (flagged, scored) in counts.items():
        print(f"  {name}: ASR {100.0 * flagged / scored:.2f}% ({flagged}/{scored} images flagged)")
    print(f"results: {request.out / 'results.sqlite'}; tables: amsmooth report {request.out}", file=sys.stderr)
    return 0
