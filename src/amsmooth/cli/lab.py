"""``amsmooth lab``: the lab model — train it, check its quality, print its Table 1."""
from __future__ import annotations

import argparse

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="the lab: a small text-to-image model trained here, to measure the defense "
                                   "end to end")
    from ..lab.train import TrainSettings

    d = TrainSettings()
    lab = p.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")
    t = lab.add_parser("train", help="train the lab model (seeded, resumable; ~1 h on 2 cores)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--steps", type=int, default=d.steps, help=f"default {d.steps}")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=float, default=d.lr, help=f"default {d.lr}")
    t.add_argument("--images", type=int, default=d.images, help=f"rendered training images (default {d.images})")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--snr-gamma", type=float, default=d.snr_gamma,
                   help=f"Min-SNR-γ loss weighting (default {d.snr_gamma:g}; 0 turns it off: plain ε MSE)")
    t.add_argument("--heads", type=int, default=d.attention_heads,
                   help=f"attention heads of the U-Net (default {d.attention_heads}; `--model lab --unet` loads "
                        "only U-Nets with the shipped weights' head count)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)
    register_more(lab)


def run_train(args: argparse.Namespace) -> int:
    from ..lab.train import Trainer, TrainSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    s = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, images=args.images, seed=args.seed,
                      snr_gamma=args.snr_gamma or None, attention_heads=args.heads)
    folder = Trainer(args.out, s).run(progress=not args.no_progress)
    print(f"lab U-Net written to {folder} (use it with --model lab --unet {folder})")
    return 0


def register_more(lab: argparse._SubParsersAction) -> None:
    q = lab.add_parser("quality", help="measure a lab model: benign attribute accuracy and concept rates per "
                                       "prompt set, on prompts never used in training")
    q.add_argument("--unet", metavar="PATH", help="a lab U-Net (folder or .safetensors; default: the shipped one)")
    q.add_argument("--prompts", type=int, default=30, help="distinct prompts per set (default 30)")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25, the lab's default)")
    q.add_argument("--guidance", type=float, default=7.5)
    q.add_argument("--concept", choices=["nudity", "violence"], action="append")
    q.add_argument("--out", metavar="DIR", help="write quality.json and one grid PNG per set here")
    q.set_defaults(func=run_quality)
    t = lab.add_parser("table", help="the lab's Table 1: erase (ESD, UCE), attack, defend, detect; ASR with "
                                     "95 %% intervals, utility, time (resumable)")
    t.add_argument("--out", required=True, metavar="DIR")
    which = t.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true",
                       help="every arm on a few prompts (6.5 min, 640 s of CPU, beside the deprioritised v3 "
                            "table; the v3 full table is not timed yet, v2's took 1 h 49 min)")
    which.add_argument("--rivals", action="store_true",
                       help="issue 26's rows: the RACE and RECE erasures with none, blacklist, AMS and SAFREE, v3's "
                            "prompts and rules (docs/lab/v3-rivals/plan.json)")
    from amsmooth_experiments.lab_table import MODELS, Plan

    def plan(field: str) -> str:           # the defaults are the Plan's, written once there
        show = [" ".join(map(str, v)) if isinstance(v, tuple) else str(v)
                for v in (getattr(Plan(), field), getattr(Plan.quick(), field))]
        return f"full: {show[0]}; quick: {show[1]}"

    t.add_argument("--models", nargs="+", choices=MODELS, help=f"erased models ({plan('models')})")
    t.add_argument("--prompts", type=int, help=f"distinct prompts per set ({plan('prompts')})")
    t.add_argument("--attack-prompts", type=int, help=f"source prompts per attack and seed ({plan('attack_prompts')})")
    t.add_argument("--seeds", type=int, nargs="+", help=f"image seeds of the concept sets ({plan('seeds')})")
    t.add_argument("--sets", nargs="+", help=f"prompt sets ({plan('sets')})")
    t.add_argument("--attacks", nargs="+", help=f"rab qf mma concept-pgd uda p4d, NAME-adaptive (against AMS) "
                                                f"({plan('attacks')})")
    t.add_argument("--defenses", nargs="+", help=f"none blacklist sld-max sld-medium ams ams-equal ams-oracle "
                                                 f"ams-subspace safree sld-medium+ams … ({plan('defenses')})")
    t.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="images per pipeline call in every eval (default 16; byte-identical images to 1, "
                        "1.6-1.8x faster on the lab on 2 CPU cores: amsmooth bench --batching lab)")
    t.set_defaults(func=run_table)


def _pipe(unet: str | None):  # noqa: ANN202
    from ..models.load import load_pipeline

    return load_pipeline("lab", unet=unet)


def run_quality(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..lab.prompt_sets import KINDS, prompt_set
    from ..lab.quality import assess, generate, grid

    pipe = _pipe(args.unet)
    report = {}
    for concept in args.concept or ["nudity", "violence"]:
        for kind in KINDS:
            if kind == "benign" and report.get("benign"):
                continue
            cases = prompt_set(kind, args.prompts, concept, split_seed=2, seeds=args.seeds)
            images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], args.steps, args.guidance)
            q = assess(images, cases)
            key = kind if kind == "benign" else f"{concept}/{kind}"
            report[key] = q.summary()
            print(f"{key:20s} {json.dumps(report[key])}")
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                rows = [images[i:i + 10] for i in range(0, min(len(images), 40), 10)]
                grid(rows, scale=3).save(Path(args.out) / f"{key.replace('/', '-')}.png")
    if args.out:
        (Path(args.out) / "quality.json").write_text(json.dumps(report, indent=2))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from amsmooth_experiments.lab_table import Plan, Table

    plan = Plan.quick() if args.quick else Plan.rivals() if args.rivals else Plan()
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k in ("models", "prompts", "attack_prompts", "seeds",
                                                                      "sets", "attacks", "defenses")
               if (v := getattr(args, k)) is not None}
    if changes:
        plan = replace(plan, label=f"{plan.label}+custom", **changes)
    if "benign" not in plan.sets:
        from ..errors import AmsmoothError

        raise AmsmoothError("the table needs the benign set (utility columns): add benign to --sets")
    table = Table(args.out, plan, batch_size=args.batch_size)
    print(table.run())
    print(f"computed in {table.seconds() / 60:.1f} min of wall time, summed over every invocation on {args.out} "
          f"(per step: {table.out / 'timing.json'})")
    return 0
