"""Seconds per lab training step for several attention-head counts (the lab model card's 1.57× claim).

    python benchmarks/lab_train_step.py [--heads 8 4 2] [--steps 10] [--threads 2]

One small training set (256 rendered images) is built once; each setting runs 3 warm-up steps of ``Trainer.train_step``
(batch 64, forward, Min-SNR loss, backward, clipping, AdamW, EMA) and times the next ``--steps``; it prints
s/step and the ratio to the first setting. Measured on the 2-core development machine (torch 2.13, 2 threads,
nothing else running; `--steps 8`, 68 s): 8 heads 2.04 s, 4 heads 1.37 s, 2 heads 1.36 s (1.51×). A bare
forward + backward + AdamW step, timed earlier the same day: 8 heads 2.28 s, 4 heads 1.67 s, 2 heads 1.45 s
(1.57×).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from amsmooth.lab.model import attention_width, lab_text_encoder
from amsmooth.lab.train import Trainer, TrainSettings, build_data


def seconds_per_step(heads: int, steps: int, data: dict[str, torch.Tensor]) -> float:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(out, TrainSettings(images=256, attention_heads=heads))
        for _ in range(3):
            trainer.train_step(data)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(data)
        return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, nargs="+", default=[8, 4, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = build_data(TrainSettings(images=256), lab_text_encoder())
    first = None
    for h in args.heads:
        s = seconds_per_step(h, args.steps, data)
        first = first or s
        print(f"heads {h} (head dim {attention_width() // h}): {s:.3f} s/step, {first / s:.2f}x the first setting",
              flush=True)


if __name__ == "__main__":
    main()
