"""``amsmooth lab``: the lab model — train it, check its quality, print its Table 1."""
from __future__ import annotations

import argparse

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="the lab: a small text-to-image model trained here, to measure the defense "
                                   "end to end")
    lab = p.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")
    t = lab.add_parser("train", help="train the lab model (seeded, resumable; ~1 h on 2 cores)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--images", type=int, default=10000, help="rendered training images (default 10000)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..lab.train import Trainer, TrainSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    s = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, images=args.images, seed=args.seed)
    folder = Trainer(args.out, s).run(progress=not args.no_progress)
    print(f"lab U-Net written to {folder} (use it with --model lab --unet {folder})")
    return 0
