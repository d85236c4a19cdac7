"""Tiny random pipelines from the shipped, scaled-down configs: SD 1.5 (``--model tiny``) and SDXL, SD3, Flux
(``--model tiny-sdxl`` / ``tiny-sd3`` / ``tiny-flux``).

The architectures are the real ones, smaller. The SDXL/SD3/Flux configs (``data/tiny-sdxl``, ``data/tiny-sd3``,
``data/tiny-flux``) keep each real architecture's structure — encoders, what the pipeline reads from them, the
denoiser type, latent channels, schedulers — at toy widths (``data/tiny-families.md`` lists the real values they
mirror). CLIP encoders use the shipped real CLIP tokenizer; T5 uses ``data/tiny-t5-tokenizer`` (a small Unigram
tokenizer built from a word list: no T5 SentencePiece model is available offline). Weights are random under a
fixed seed, so images are noise. For smoke runs, demos of the tooling and tests — never for results.

The tiny SD-1.5 U-Net (``data/tiny/unet``: blocks 32/64, cross-attention 32) has one attention head per block
(``attention_head_dim`` 1, which SD-1.x configs read as the head count): with 4 heads of 8 and 16 dimensions,
torch's CPU attention over the 32×32 latent took ~90 % of a tiny run's time (an inpainting test: 33 s of CPU,
13 s with one head; the whole test suite 900 s → 568 s).
"""
from __future__ import annotations

import inspect
import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..encoders import TextEncoder
from .assembly import assemble_pipeline

TINY_SEED = 0
SEED = TINY_SEED
TINY_FAMILIES = {"tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}


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


def tiny_text_encoder(seed: int = TINY_SEED, **overrides: int) -> TextEncoder:
    """``TextEncoder`` over the tiny CLIP text model and the real CLIP tokenizer."""
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

# ------------------------------------------------------------------ SDXL, SD3, Flux


def data_dir(name: str) -> Path:
    return Path(str(resources.files("amsmooth") / "data" / name))


def _cfg(family: str, part: str, file: str = "config.json") -> dict:
    d = json.loads((data_dir(f"tiny-{family}") / part / file).read_text())
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "architectures"}


def clip_tokenizer(pad_token: str | None = None):  # noqa: ANN201 - a CLIP tokenizer
    """The shipped real CLIP tokenizer; SDXL's and SD3's second tokenizer pad with ``!`` (``pad_token``)."""
    from transformers import CLIPTokenizer

    kw = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(data_dir("tiny") / "tokenizer"), **kw)


def t5_tokenizer():  # noqa: ANN201 - a T5 tokenizer
    """The shipped tiny T5-style tokenizer (fast, Unigram, ``</s>`` appended, ``<pad>`` = 0)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(data_dir("tiny-t5-tokenizer")))


def _text_models(family: str) -> dict[str, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    out = {}
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        path = data_dir(f"tiny-{family}") / part / "config.json"
        if not path.is_file():
            continue
        arch = json.loads(path.read_text())["architectures"][0]
        cfg = _cfg(family, part)
        if arch == "T5EncoderModel":
            out[part] = T5EncoderModel(T5Config(**cfg))
        else:
            cls = CLIPTextModelWithProjection if arch == "CLIPTextModelWithProjection" else CLIPTextModel
            out[part] = cls(CLIPTextConfig(**cfg))
    return out


def tiny_family_components(family: str, seed: int = SEED) -> dict[str, Any]:
    """Random modules, tokenizers and scheduler of the tiny ``sdxl``, ``sd3`` or ``flux`` pipeline."""
    import diffusers

    index = json.loads((data_dir(f"tiny-{family}") / "model_index.json").read_text())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        parts: dict[str, Any] = _text_models(family)
        for part in ("unet", "transformer", "vae"):
            if part in index:
                parts[part] = getattr(diffusers, index[part][1]).from_config(_cfg(family, part))
    parts = {k: v.eval() for k, v in parts.items()}
    sched = index["scheduler"][1]
    parts["scheduler"] = getattr(diffusers, sched).from_config(_cfg(family, "scheduler", "scheduler_config.json"))
    parts["tokenizer"] = clip_tokenizer()
    if index.get("tokenizer_2", [None, None])[1] == "CLIPTokenizer":
        parts["tokenizer_2"] = clip_tokenizer("!")
    elif "tokenizer_2" in index:
        parts["tokenizer_2"] = t5_tokenizer()
    if "tokenizer_3" in index:
        parts["tokenizer_3"] = t5_tokenizer()
    return parts


def tiny_text_parts(family: str, seed: int = SEED) -> dict[str, Any]:
    """Only the text encoders and tokenizers of a tiny family (the same weights as in its pipeline)."""
    return {k: v for k, v in tiny_family_components(family, seed).items() if k.startswith(("text_", "tokenizer"))}


def tiny_family_pipeline(name: str, kind: str = "txt2img", seed: int = SEED):  # noqa: ANN201 - a diffusers pipeline
    """The undefended tiny pipeline ``tiny-sdxl`` / ``tiny-sd3`` / ``tiny-flux`` (kind: txt2img, img2img,
    inpaint), 64 px by default."""
    import diffusers

    family = TINY_FAMILIES[name]
    base = json.loads((data_dir(f"tiny-{family}") / "model_index.json").read_text())["_class_name"]
    suffix = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[kind]
    cls = getattr(diffusers, base.replace("Pipeline", f"{suffix}Pipeline"))
    parts = tiny_family_components(family, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls(**{k: v for k, v in parts.items() if k in _init_args(cls)})
    if family == "flux":
        pipe.default_sample_size = 32           # diffusers fixes Flux at 128 latents (256 px here); keep 64 px
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _init_args(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)
