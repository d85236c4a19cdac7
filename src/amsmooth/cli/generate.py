"""``amsmooth generate``: defended (or undefended) images with a JSON sidecar each."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..batching import per_prompt_small_gemms
from ..errors import AmsmoothError
from ..io import atomic_save_image, atomic_write_json, check_writable_dir, inside
from ..prompts import PromptCase
from .common import (
                     SAFREE_OPTIONS,
                     SMOOTHING_OPTIONS,
                     add_concept_args,
                     add_safree_args,
                     add_smoothing_args,
                     collect_prompts,
                     safree_config,
                     smoothing_config,
)
from .model_options import add_generation_args, add_model_args, generation_settings, load_model, validate_generation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images with Adaptive Median Smoothing")
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument("--prompts-file", help="CSV in the data contract (prompt, case_number, evaluation_seed, "
                                          "evaluation_guidance) or a text file, one prompt a line")
    add_model_args(p)
    p.add_argument("--defense", choices=["ams", "none", "safree"], default="ams",
                   help="ams (default), none, or safree (the SAFREE baseline; add --ams for SAFREE on top of AMS)")
    p.add_argument("--ams", action="store_true", help="with --defense safree: AMS underneath SAFREE")
    p.add_argument("--smoothing-stage", choices=["text", "unet"], default="text",
                   help="text: AMS (median of n text encodings); unet: naive median of n U-Net predictions "
                        "per step (Sec. 3.2, ~n× slower)")
    add_concept_args(p)
    add_smoothing_args(p)
    add_safree_args(p)
    add_generation_args(p)
    p.add_argument("--image", metavar="PNG", help="init image: image-to-image generation")
    p.add_argument("--strength", type=float, default=0.8, help="img2img strength (default 0.8)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)


def build_defended(args: argparse.Namespace, img2img: bool = False):  # noqa: ANN201 - a family pipeline
    """Load the pipeline (+ U-Net / text-encoder replacements) and give it the chosen defense."""
    from ..pipelines import defend_pipeline, undefended

    pipe = load_model(args, img2img=img2img)
    if args.defense == "none":
        return undefended(pipe), None
    if args.defense == "safree":
        from ..baselines.safree_pipeline import SafreePipeline

        config = smoothing_config(args) if args.ams else None
        return SafreePipeline.from_pipeline(pipe, safree_config(args), config), config
    config = smoothing_config(args)
    return defend_pipeline(pipe, config.concepts, config, stage=args.smoothing_stage), config


def check_defense_options(args: argparse.Namespace) -> None:
    """--ams only adds AMS to safree; --safree-* only configure safree; SAFREE runs at the text stage."""
    if args.ams and args.defense != "safree":
        raise AmsmoothError("--ams adds AMS underneath --defense safree; --defense ams is AMS alone")
    if args.defense != "safree" and any(getattr(args, f, None) is not None for f in SAFREE_OPTIONS):
        raise AmsmoothError("--safree-* options configure --defense safree; they have no effect here")
    if args.defense == "safree" and not args.ams and any(getattr(args, f, None) is not None
                                                         for f in SMOOTHING_OPTIONS):
        raise AmsmoothError("smoothing options need AMS: add --ams to --defense safree")
    if args.defense == "safree" and args.smoothing_stage != "text":
        raise AmsmoothError("--smoothing-stage unet does not combine with SAFREE")


def load_init_image(path: str):  # noqa: ANN201 - PIL image
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise AmsmoothError(f"cannot read init image {path}: {e}") from None


def sidecar(case: PromptCase, k: int, seed: int, guidance: float, args: argparse.Namespace, config: Any, rel: dict,
            timings: dict, safree: dict | None = None, defended: bool = True) -> dict:
    return {"case_number": case.case_number, "image_index": k, "prompt": case.prompt, "seed": seed,
            "guidance": guidance, "steps": args.steps, "model": args.model, "unet": args.unet,
            "text_encoder": args.text_encoder, "defense": args.defense, "defended": defended,
            "smoothing_stage": args.smoothing_stage if config else None,
            "config": config.to_dict() if config else None,
            "tokens": [{"token": t["token"], "word": t["word"], "sim": t["sim"], "sigma": t["sigma"]}
                       for t in rel.get("tokens", [])],
            **({"encoders": {name: [{k: t[k] for k in ("token", "word", "sim_own", "sim", "sigma")} for t in rows]
                             for name, rows in rel["encoders"].items()}}
               if len(rel.get("encoders", {})) > 1 else {}),
            **({"ams": args.ams, "safree": safree} if safree is not None else {}),
            "timings": timings}


def batches(cases: Sequence[PromptCase], gen: Any, size: int) -> list[list[PromptCase]]:
    """Consecutive cases sharing a guidance, at most ``size`` a batch (the other settings are the run's)."""
    out: list[list[PromptCase]] = []
    for case in cases:
        if out and len(out[-1]) < size and gen.guidance_of(out[-1][0]) == gen.guidance_of(case):
            out[-1].append(case)
        else:
            out.append([case])
    return out


def count_steps(bar: Any, prompts: int, planned: int) -> Any:
    """A ``callback_on_step_end`` that advances ``bar`` by ``prompts`` per U-Net step. The bar was sized for
    ``planned`` steps per call; at a call's first step the total is corrected to the steps the scheduler really
    runs (PNDM adds warm-up steps, img2img's strength removes some: issue 28, the bar overran on PNDM)."""
    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        if step == 0:
            bar.total += ((getattr(pipe, "num_timesteps", None) or planned) - planned) * prompts
        bar.total = max(bar.total, bar.n + prompts)              # never past the end, whatever the pipeline
        bar.update(prompts)
        return {}

    return on_step


def generate_batch(dp: Any, group: Sequence[PromptCase], gen: Any, args: argparse.Namespace, init: Any,
                   bar: Any) -> Any:
    """One pipeline call for ``group``: image k of case b from a generator seeded with case b's seed (one case:
    one generator for its K images, as without batching; the U-Net's small GEMMs per prompt). Returns the
    defended output (B·K images)."""
    K, seeds = args.images_per_prompt, [gen.seed_of(c) for c in group]
    if len(group) == 1:
        generator: Any = torch.Generator().manual_seed(seeds[0])
    else:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        generator = [g for g in gens for _ in range(K)]
    kwargs = {"image": init, "strength": args.strength} if init is not None else {
        "height": args.height, "width": args.width}
    with per_prompt_small_gemms(dp, len(group)):
        return dp([c.prompt for c in group] if len(group) > 1 else group[0].prompt,
                  negative_prompt=args.negative_prompt, num_images_per_prompt=K, generator=generator,
                  num_inference_steps=args.steps, guidance_scale=gen.guidance_of(group[0]),
                  callback_on_step_end=count_steps(bar, len(group), args.steps), **kwargs)


def run(args: argparse.Namespace) -> int:
    validate_generation(args)
    check_defense_options(args)
    cases = collect_prompts(args.prompts, args.prompts_file)
    config = smoothing_config(args) if args.defense == "ams" or args.ams else None  # validates σ0/k/n early
    if args.defense == "safree":
        safree_config(args)                                                       # and SAFREE's
    out = Path(args.out)
    check_writable_dir(out)
    init = load_init_image(args.image) if args.image else None
    dp, config = build_defended(args, img2img=init is not None)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cases) * args.steps, desc="generate", unit="step", file=sys.stderr)
    started, text_s, gen = time.perf_counter(), 0.0, generation_settings(args)
    for group in batches(cases, gen, args.batch_size):
        result = generate_batch(dp, group, gen, args, init, bar)
        text_s += result.timings["text_s"]
        timings = {**result.timings, "batch_prompts": len(group)}
        defended = bool(getattr(result, "defended", False))   # AMS ran on this call (not what was asked)
        for b, case in enumerate(group):
            rel = result.relevance[b] if result.relevance else {}
            safree = None
            if args.defense == "safree":
                safree = {**dp.settings(), **result.safree[b]}
            for k in range(args.images_per_prompt):
                image, stem = result.images[b * args.images_per_prompt + k], f"{case.case_number}_{k}"
                atomic_save_image(inside(out, f"{stem}.png"), image)
                atomic_write_json(inside(out, f"{stem}.json"), sidecar(case, k, gen.seed_of(case),
                                                                      gen.guidance_of(case), args, config, rel,
                                                                      timings, safree, defended))
    bar.close()
    total = time.perf_counter() - started
    n_img = len(cases) * args.images_per_prompt
    print(f"wrote {n_img} image(s) + sidecars to {out} in {total:.1f} s ({total / n_img:.2f} s/image; defense "
          f"{args.defense}, batch size {args.batch_size}, text stage {1000 * text_s / len(cases):.1f} ms/prompt)")
    return 0
