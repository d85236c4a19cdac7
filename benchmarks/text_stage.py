"""Encoder calls and wall time of `relevance` + `encode` for 1 and 32 prompts, cold and warm word cache.

    python benchmarks/text_stage.py --encoder minilm          # the real offline MiniLM
    python benchmarks/text_stage.py --encoder sd15-random     # SD-1.5's CLIP ViT-L/14 text encoder, random weights
"""
from __future__ import annotations

import argparse
import time

import torch

from amsmooth import AdaptiveMedianSmoothing, Concept, SmoothingConfig, TextEncoder


def coco_prompts(k: int) -> list[str]:
    from amsmooth_experiments.bench import BATCH_PROMPTS

    return (BATCH_PROMPTS * ((k + 15) // 16))[:k] if k > 16 else BATCH_PROMPTS[:k]


def load(name: str) -> TextEncoder:
    if name == "sd15-random":
        from amsmooth_experiments.bench import sd15_text_encoder

        return sd15_text_encoder()
    from amsmooth.loading import load_encoder

    return load_encoder(name)


def measure(ams: AdaptiveMedianSmoothing, prompts: list[str]) -> tuple[int, float]:
    enc = ams.encoder
    calls, t = enc.calls, time.perf_counter()
    ams.relevance(prompts)
    ams.encode(prompts, generator=torch.Generator().manual_seed(0))
    return enc.calls - calls, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--global", dest="use_global", action="store_true")
    args = p.parse_args()
    enc = load(args.encoder)
    concept = Concept.builtin("nudity", enc)
    enc.encode(["warm up"])
    print(f"encoder {args.encoder}, global={args.use_global}, n=13, {torch.get_num_threads()} threads")
    print("| prompts | cache | encoder calls | wall time (s) |\n|---:|---|---:|---:|")
    for k in (1, 32):
        ams = AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(use_global=args.use_global))
        for state in ("cold", "warm"):
            calls, secs = measure(ams, coco_prompts(k))
            print(f"| {k} | {state} | {calls} | {secs:.3f} |")


if __name__ == "__main__":
    main()
