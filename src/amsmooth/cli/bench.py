"""``amsmooth bench``: the overhead benchmark (Table 2) on the real SD-1.x architecture with random weights."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import AmsmoothError
from ..models.hub import quiet_libraries
from .model_options import DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the defense against undefended generation, SLD and U-Net smoothing")
    p.add_argument("--quick", action="store_true",
                   help="1 U-Net repeat, naive-smoothing step extrapolated; end to end at 256 px / 2 steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--size", type=int, default=512, help="component timing and projection size (px)")
    p.add_argument("--steps", type=int, default=50, help="projection steps")
    p.add_argument("--e2e-size", type=int, help="end-to-end size (px; quick: 256, else --size)")
    p.add_argument("--e2e-steps", type=int, help="end-to-end steps (quick: 2, else --steps)")
    p.add_argument("--unet-repeat", type=int, help="U-Net timing repeats (median)")
    p.add_argument("--n", type=int, default=13)
    p.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--family", choices=["sd", "sdxl", "sd3", "flux"], default="sd",
                   help="sd: SD-1.5 (Table 2, default); sdxl (1024 px, 50 steps), sd3 (SD3-medium, 1024 px, 28 "
                        "steps), flux (Flux-dev, 1024 px, 28 steps): components at real width, depth extrapolated")
    p.add_argument("--batching", metavar="MODEL", choices=["tiny", "lab"],
                   help="instead: time generate's --batch-size on MODEL (tiny or lab; 16 prompts, AMS, --e2e-steps "
                        "steps, default the model's) at each --batch-sizes, with the speed-up over the first and a "
                        "byte-identity check")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], metavar="N")
    p.add_argument("--profile", action="store_true", help="only profile the AMS text stage (torch.profiler "
                                                          "table of the top ops) instead of the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amsmooth_experiments.bench import format_report, run_benchmark

    for name in ("size", "e2e_size"):
        v = getattr(args, name)
        if v is not None and (v < 8 or v % 8):
            raise AmsmoothError(f"--{name.replace('_', '-')} must be a positive multiple of 8, got {v}")
    if args.steps < 1 or (args.e2e_steps is not None and args.e2e_steps < 1):
        raise AmsmoothError("steps must be >= 1")
    quiet_libraries()
    if args.batching:
        from amsmooth_experiments.bench import batching_speedup, format_batching

        if min(args.batch_sizes) < 1:
            raise AmsmoothError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
        rep = batching_speedup(args.batching, 16, tuple(args.batch_sizes), steps=args.e2e_steps,
                               log=lambda m: print(m, file=sys.stderr))
        print(format_batching(rep))
        if args.json:
            Path(args.json).write_text(json.dumps(rep, indent=2))
        return 0
    if args.family != "sd":
        from amsmooth_experiments.family_bench import format_family_report, run_family_benchmark

        rep = run_family_benchmark(args.family, args.quick, args.n, log=lambda m: print(m, file=sys.stderr))
        print(format_family_report(rep))
        if args.json:
            Path(args.json).write_text(json.dumps(dataclasses.asdict(rep), indent=2))
        return 0
    if args.profile:
        from amsmooth_experiments.bench import profile_text_stage, sd15_text_encoder

        print(profile_text_stage(sd15_text_encoder(args.device, DTYPES[args.dtype]), args.n))
        return 0
    report = run_benchmark(args.quick, args.device, DTYPES[args.dtype], args.size, args.steps, args.e2e_size,
                           args.e2e_steps, args.unet_repeat, args.n, log=lambda m: print(m, file=sys.stderr))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return 0
