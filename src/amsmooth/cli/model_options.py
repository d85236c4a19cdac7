"""Options every image-making command shares: the model (--model, --unet, …, --dtype) and the generation
settings (--seed, --steps, --guidance, …, --batch-size), with their checks and the model loader."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

from ..eval.session import DTYPES, ModelSource, check_generation
from ..limits import STRENGTH
from ..prompts import GenerationSettings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def add_model_args(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """--model (required unless ``default_model``), --unet, --text-encoder, --device, --dtype."""
    p.add_argument("--model", required=default_model is None, default=default_model, metavar="SRC",
                   help="SD 1.x/2.x, SDXL, SD3 or Flux pipeline: Hugging Face id, local diffusers folder, "
                        "single-file .safetensors (SDXL/SD3/Flux), 'lab' (the small model trained here on a synthetic "
                        "world), or 'tiny', 'tiny-sdxl', 'tiny-sd3', 'tiny-flux' (random, for smoke runs: their "
                        "images are noise)" + (f"; default {default_model}" if default_model else ""))
    p.add_argument("--unet", metavar="PATH", help="unlearned U-Net: diffusers folder, .safetensors, .pt/.ckpt")
    p.add_argument("--transformer", metavar="PATH", help="unlearned SD3/Flux transformer: diffusers folder or "
                                                          ".safetensors state dict")
    p.add_argument("--text-encoder", metavar="PATH", help="replacement text encoder (folder or state dict)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: float16 on CUDA, float32 on CPU")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed when the prompt file gives none (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default 50; 25 with --model lab)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--height", type=int, help="pixels, divisible by 8 (default: the model's)")
    p.add_argument("--width", type=int, help="pixels, divisible by 8 (default: the model's)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="prompts per pipeline call (default 1): consecutive prompts with one guidance are "
                        "generated together, each from its own seed's generator, so an image does not depend on "
                        "its batch (byte-identical to batch 1 on CPU, see docs/evaluation.md)")


def validate_generation(args: argparse.Namespace) -> None:
    """Reject bad numbers before anything is loaded or written (and fill in the model's default steps)."""
    if args.steps is None:
        from ..models.load import default_steps

        args.steps = default_steps(getattr(args, "model", None) or "")
    STRENGTH.check(getattr(args, "strength", None))
    check_generation(generation_settings(args), getattr(args, "batch_size", 1))


def model_source(args: argparse.Namespace) -> ModelSource:
    """The pipeline the model flags name."""
    return ModelSource(args.model, unet=args.unet, transformer=getattr(args, "transformer", None),
                       text_encoder=args.text_encoder, device=args.device, dtype=args.dtype)


def resolve_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    return model_source(args).torch_dtype(device)


def load_model(args: argparse.Namespace, device: torch.device | None = None,
               img2img: bool = False) -> DiffusionPipeline:
    """The pipeline of --model (+ --unet / --text-encoder replacements) on ``device`` (default: --device)."""
    return model_source(args).load(device, img2img=img2img)


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The generation flags of ``add_generation_args`` as the data contract's per-case settings."""
    return GenerationSettings(args.images_per_prompt, args.steps, args.guidance, args.seed, args.height,
                              args.width, args.negative_prompt)
