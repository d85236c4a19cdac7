"""``amsmooth eval``: robustness of a defense as the paper measures it — every case of every prompt set generated
per the data contract, scored by a detector, one row per image in RUN_DIR (resumable, shardable)."""
from __future__ import annotations

import argparse
import sys

from ..errors import AmsmoothError
from ..eval.runner import run_jobs
from .model_options import add_generation_args, add_model_args
from .runs import add_defense_args, add_run_args, prepare, report_progress


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
    from ..eval.detectors import DETECTORS, make_detector
    from ..eval.tables import summarize

    if args.detector not in DETECTORS:
        raise AmsmoothError(f"unknown detector {args.detector!r}; choose one of: {', '.join(DETECTORS)}")
    run = prepare(args, "eval", detector=lambda device: make_detector(
        args.detector, args.threshold, args.detector_classes, args.q16_clip, device))
    with run.store:
        stats = run_jobs(run.defense, run.my_jobs, run.settings, run.run_dir, run.store, run.detector,
                         batch_size=args.batch_size)
        report_progress("eval", run, stats)
        if run.shard.count == 1:
            for name, (flagged, scored) in summarize(run.store).counts.items():
                print(f"  {name}: ASR {100.0 * flagged / scored:.2f}% ({flagged}/{scored} images flagged)")
    print(f"results: {run.run_dir / 'results.sqlite'}; tables: amsmooth report {run.run_dir}", file=sys.stderr)
    return 0
