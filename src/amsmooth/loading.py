"""Load a Stable Diffusion pipeline and swap in unlearned weights (ESD U-Nets, AdvUnlearn text encoders, ...).

The base pipeline comes from a Hugging Face id, a local diffusers folder, or ``"tiny"`` (random, for tests).
A replacement U-Net may be a diffusers folder, a ``.safetensors`` file or a ``.pt``/``.ckpt`` state dict in the
diffusers layout or the original CompVis/LDM layout (converted with diffusers' own converter). A replacement
text encoder may be a ``CLIPTextModel`` folder or a state dict. Every replacement is checked key by key and shape
by shape against the pipeline before anything is copied, so a bad file leaves the pipeline untouched.
Pickles are never unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .assembly import assemble_pipeline  # re-exported: amsmooth.loading.assemble_pipeline is public
from .errors import AmsmoothError
from .hub import fetch_error, hub_offline
from .tiny import tiny_pipeline
from .weights import HUB_ID, dtype_kwargs, load_text_encoder_weights, load_unet_weights
from .weights import apply_state_dict as apply_state_dict  # re-exported: public here before amsmooth.weights
from .weights import read_state_dict as read_state_dict
from .weights import source_kind as source_kind

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# ------------------------------------------------------------------------------------------------ devices

def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' → cuda if available, else cpu; anything else as torch understands it, checked for availability."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise AmsmoothError(f"unknown device '{device}' ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AmsmoothError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AmsmoothError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


# ------------------------------------------------------------------------------------------------ pipelines

def default_steps(model: str) -> int:
    """Denoising steps when the user gives none: the lab model's own default, else the paper's 50."""
    if model == "lab":
        from .lab.model import LAB_STEPS

        return LAB_STEPS
    return 50


def load_pipeline(model: str, *, unet: str | None = None, text_encoder: str | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  img2img: bool = False, local_files_only: bool | None = None,
                  transformer: str | None = None) -> DiffusionPipeline:
    """A Stable Diffusion (1.x/2.x) text-to-image or img2img pipeline, optionally with unlearned weights.

    model: Hugging Face id, local diffusers folder, "tiny" (random, for tests) or "lab" (the lab model trained
    by this package on its synthetic world, shipped as package data). unet / text_encoder: replacements (see module
    docstring). No safety checker (the defense is evaluated on raw outputs); the progress bar is disabled.
    SDXL, SD3 and Flux models (and "tiny-sdxl", "tiny-sd3", "tiny-flux") are loaded by
    :mod:`amsmooth.families.loading` (``transformer``: an SD3/Flux replacement).
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    from .families.loading import family_of_source, load_family_pipeline

    family = family_of_source(model, hub_offline(local_files_only))
    if family is not None or transformer:
        return load_family_pipeline(model, family or "", unet=unet, transformer=transformer,
                                    text_encoder=text_encoder, device=dev, dtype=dtype,
                                    kind="img2img" if img2img else "txt2img", local_files_only=local_files_only)
    pipe = _base_pipeline(model, dtype, local_files_only, img2img, replaced_unet=bool(unet))
    if unet:
        load_unet_weights(pipe.unet, unet, local_files_only=local_files_only)
    if text_encoder:
        load_text_encoder_weights(pipe, text_encoder, local_files_only=local_files_only)
    if img2img and model not in ("tiny", "lab"):
        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = assemble_pipeline(StableDiffusionImg2ImgPipeline, pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _base_pipeline(model: str, dtype: torch.dtype, local_files_only: bool | None,
                   img2img: bool, replaced_unet: bool = False) -> DiffusionPipeline:
    """The text-to-image pipeline; for "tiny", tiny_pipeline builds the img2img one itself."""
    if model == "tiny":
        return _tiny(dtype, img2img)
    if model == "lab":
        from .lab.model import lab_pipeline

        pipe = lab_pipeline(img2img=img2img, untrained=replaced_unet)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    from diffusers import StableDiffusionPipeline

    if not Path(model).is_dir() and not (HUB_ID.match(model) and model.count("/") == 1):
        raise AmsmoothError(f"model '{model}' is neither a local diffusers folder (with model_index.json) nor a "
                            f"Hugging Face id like CompVis/stable-diffusion-v1-4")
    offline = hub_offline(local_files_only)
    try:
        return StableDiffusionPipeline.from_pretrained(
            model, safety_checker=None, requires_safety_checker=False, local_files_only=offline, **dtype_kwargs(dtype))
    except (OSError, ValueError) as e:
        raise fetch_error("model", model, offline, e) from None


def _tiny(dtype: torch.dtype, img2img: bool):  # noqa: ANN202
    pipe = tiny_pipeline(img2img=img2img)  # float32; casting it anyway makes diffusers log a spurious warning
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def load_encoder(source: str, max_length: int | None = None, device: str | None = None):  # noqa: ANN201
    """The text encoder of ``source``: 'tiny' (the shipped tiny random CLIP), 'lab' (the lab's MiniLM), 'minilm'
    (the offline all-MiniLM-L6-v2), ``SRC[:NAME]`` for one encoder of an SDXL/SD3/Flux source, else a Hugging Face
    id or folder (``TextEncoder.from_pretrained``)."""
    from .encoders import TextEncoder, minilm_folder
    from .hub import quiet_libraries
    from .tiny import tiny_text_encoder

    if max_length is not None and max_length < 1:
        raise AmsmoothError(f"--max-length must be >= 1, got {max_length}")
    quiet_libraries()
    if source == "tiny":
        return tiny_text_encoder()
    if source == "lab" and not os.path.exists(source):
        from .lab.model import lab_text_encoder

        return lab_text_encoder()
    if is_family(source.split(":")[0]):
        return family_encoder(source)
    if source == "minilm" and not os.path.exists(source):
        source = minilm_folder()
    return TextEncoder.from_pretrained(source, max_length=max_length, device=device)


def is_family(source: str) -> bool:
    """A multi-encoder source: tiny-sdxl / tiny-sd3 / tiny-flux, or an SDXL/SD3/Flux diffusers folder."""
    from .families.loading import family_of_source

    return family_of_source(source, local_files_only=True) is not None


def family_encoder(source: str):  # noqa: ANN201 - amsmooth.families.views.EncoderView
    """One encoder of a multi-encoder family, ``SRC[:NAME]`` (default the first, e.g. ``tiny-sdxl:clip-g``)."""
    from .families.loading import load_family_views

    base, _, name = source.partition(":")
    views = load_family_views(base)
    names = [v.slot.name for v in views]
    if name and name not in names:
        raise AmsmoothError(f"{base} has no encoder {name!r}; it has: {', '.join(names)}")
    return views[names.index(name) if name else 0]
