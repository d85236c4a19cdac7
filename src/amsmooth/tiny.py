"""Tiny random Stable Diffusion components built from the shipped, scaled-down SD-1.5 configs (``--model tiny``).

The architecture is the real one, smaller; weights are random under a fixed seed, so images are noise. For smoke
runs, demos of the tooling and tests — never for results.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from .assembly import assemble_pipeline

TINY_SEED = 0


def tiny_dir() -> Path:
    """Folder of the shipped tiny configs and the real CLIP tokenizer."""
    return Path(str(resources.files("amsmooth") / "data" / "tiny"))


def _config(name: str) -> dict:
    return json.loads((tiny_dir() / name / "config.json").read_text())


def tiny_tokenizer():  # noqa: ANN201 - a transformers CLIP tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir() / "tokenizer"))


def tiny_clip_text_model(seed: int = TINY_SEED, **overrides: int) -> torch.nn.Module:
    """A random ``CLIPTextModel`` of the SD-1.5 text-encoder architecture, scaled down (hidden 32, 2 layers)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in _config("text_encoder").items() if k != "architectures"}
    cfg.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(**cfg)).eval()


def tiny_text_encoder(seed: int = TINY_SEED, **overrides: int):  # noqa: ANN201 - amsmooth.TextEncoder
    """``TextEncoder`` over the tiny CLIP text model and the real CLIP tokenizer."""
    from .encoders import TextEncoder

    return TextEncoder(tiny_clip_text_model(seed, **overrides), tiny_tokenizer(), name=f"tiny-clip(seed={seed})")


def tiny_components(seed: int = TINY_SEED) -> dict:
    """U-Net, VAE, scheduler, text encoder and tokenizer of the tiny pipeline (random, seeded)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    sched = json.loads((tiny_dir() / "scheduler" / "scheduler_config.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(_config("unet")).eval()
        vae = AutoencoderKL.from_config(_config("vae")).eval()
    return {"unet": unet, "vae": vae, "scheduler": PNDMScheduler.from_config(sched),
            "text_encoder": tiny_clip_text_model(seed), "tokenizer": tiny_tokenizer(),
            "safety_checker": None, "feature_extractor": None}


def tiny_pipeline(seed: int = TINY_SEED, img2img: bool = False):  # noqa: ANN201 - a diffusers pipeline
    """A random tiny ``StableDiffusionPipeline`` (or the img2img one), 64 px images by default (32-latent U-Net)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    return assemble_pipeline(cls, tiny_components(seed))
