"""Load a pipeline by source and swap in unlearned weights (ESD U-Nets, AdvUnlearn text encoders, SD3/Flux
transformers, ...): the one loader of every family (SD 1.x/2.x, SDXL, SD3, Flux).

The base pipeline comes from a Hugging Face id, a local diffusers folder, a single-file checkpoint (SDXL, SD3,
Flux) or a named model (:mod:`.named`: ``"tiny"``, ``"tiny-sdxl"`` … random, for tests; ``"lab"``).
A replacement U-Net may be a diffusers folder, a ``.safetensors`` file or a ``.pt``/``.ckpt`` state dict in the
diffusers layout or the original CompVis/LDM layout (converted with diffusers' own converter). A replacement
text encoder may be a ``CLIPTextModel`` folder or a state dict. Every replacement is checked key by key and shape
by shape against the pipeline before anything is copied, so a bad file leaves the pipeline untouched.
Pickles are never unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..encoders import TextEncoder, minilm_folder
from ..errors import AmsmoothError
from ..pipelines.registry import family_slots
from ..pipelines.views import EncoderView
from .assembly import assemble_pipeline
from .hub import fetch_error, hub_offline, quiet_libraries
from .named import DEFAULT_STEPS, named_model
from .tiny import TINY_FAMILIES, tiny_family_pipeline, tiny_pipeline, tiny_text_parts
from .weights import (
    HUB_ID,
    apply_state_dict,
    dtype_kwargs,
    load_text_encoder_weights,
    load_unet_weights,
    read_state_dict,
    source_kind,
)

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
    """Denoising steps when the user gives none: a named model's own default (the lab's), else the paper's 50."""
    named = named_model(model)
    return named.attr(named.steps) if named is not None and named.steps else DEFAULT_STEPS


def load_pipeline(model: str, *, unet: str | None = None, text_encoder: str | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  img2img: bool = False, local_files_only: bool | None = None,
                  transformer: str | None = None) -> DiffusionPipeline:
    """A Stable Diffusion (1.x/2.x) text-to-image or img2img pipeline, optionally with unlearned weights.

    model: Hugging Face id, local diffusers folder, "tiny" (random, for tests) or "lab" (the lab model trained
    by this package on its synthetic world, shipped as package data). unet / text_encoder: replacements (see module
    docstring). No safety checker (the defense is evaluated on raw outputs); the progress bar is disabled.
    SDXL, SD3 and Flux models (and "tiny-sdxl", "tiny-sd3", "tiny-flux") are loaded by
    :func:`load_family_pipeline` (``transformer``: an SD3/Flux replacement).
    """
    dev = resolve_device(device) if isinstance(device, str) else device
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
        lab = named_model("lab")
        pipe = lab.attr(lab.pipeline)(img2img=img2img, untrained=replaced_unet)
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


def load_encoder(source: str, max_length: int | None = None, device: str | None = None) -> TextEncoder:
    """The text encoder of ``source``: 'tiny' (the shipped tiny random CLIP), 'lab' (the lab's MiniLM), 'minilm'
    (the offline all-MiniLM-L6-v2), ``SRC[:NAME]`` for one encoder of an SDXL/SD3/Flux source, else a Hugging Face
    id or folder (``TextEncoder.from_pretrained``)."""
    if max_length is not None and max_length < 1:
        raise AmsmoothError(f"--max-length must be >= 1, got {max_length}")
    quiet_libraries()
    named = named_model(source) if source in ("tiny", "lab") and not os.path.exists(source) else None
    if named is not None:
        return named.attr(named.encoder)()
    if is_family(source.split(":")[0]):
        return family_encoder(source)
    if source == "minilm" and not os.path.exists(source):
        source = minilm_folder()
    return TextEncoder.from_pretrained(source, max_length=max_length, device=device)


def is_family(source: str) -> bool:
    """A multi-encoder source: tiny-sdxl / tiny-sd3 / tiny-flux, or an SDXL/SD3/Flux diffusers folder."""
    return family_of_source(source, local_files_only=True) is not None


def family_encoder(source: str) -> EncoderView:
    """One encoder of a multi-encoder family, ``SRC[:NAME]`` (default the first, e.g. ``tiny-sdxl:clip-g``)."""
    base, _, name = source.partition(":")
    views = load_family_views(base)
    names = [v.slot.name for v in views]
    if name and name not in names:
        raise AmsmoothError(f"{base} has no encoder {name!r}; it has: {', '.join(names)}")
    return views[names.index(name) if name else 0]


# ------------------------------------------------------------------------------------------------ SDXL, SD3, Flux

CLASS_FAMILY = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
                "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
# markers of an original-layout single-file checkpoint (as diffusers' own model-type inference reads them)
SINGLE_FILE_MARKERS = {"sdxl": "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
                       "sd3": "joint_blocks.0.context_block.adaLN_modulation.1.bias",
                       "flux": "double_blocks.0.img_attn.norm.key_norm.scale"}
KINDS = ("txt2img", "img2img", "inpaint")


def family_of_source(model: str, local_files_only: bool = False) -> str | None:
    """``sdxl``, ``sd3`` or ``flux`` for a tiny name, a diffusers folder / Hub id (its model_index.json) or a
    single-file ``.safetensors`` checkpoint; None otherwise (SD 1.x/2.x or unknown: the SD loader decides)."""
    if model in TINY_FAMILIES:
        return TINY_FAMILIES[model]
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                keys = set(f.keys())
        except Exception:  # noqa: BLE001 - not ours to judge: the SD loader reports it
            return None
        keys |= {k.removeprefix("model.diffusion_model.") for k in keys}
        return next((fam for fam, key in SINGLE_FILE_MARKERS.items() if key in keys), None)
    index = None
    if (p / "model_index.json").is_file():
        index = p / "model_index.json"
    elif not p.exists() and model.count("/") == 1:
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(model, "model_index.json", local_files_only=local_files_only))
        except Exception:  # noqa: BLE001 - not cached / offline: the SD loader gives the error
            return None
    if index is None:
        return None
    try:
        return CLASS_FAMILY.get(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return None


def pipeline_class(family: str, kind: str = "txt2img") -> type:
    """The undefended diffusers class of a family and kind."""
    import diffusers

    base = {"sdxl": "StableDiffusionXL{}Pipeline", "sd3": "StableDiffusion3{}Pipeline", "flux": "Flux{}Pipeline"}
    return getattr(diffusers, base[family].format({"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[kind]))


def load_family_pipeline(model: str, family: str, *, unet: str | None = None, transformer: str | None = None,
                         text_encoder: str | None = None, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32, kind: str = "txt2img",
                         local_files_only: bool | None = None) -> Any:
    """The (undefended) pipeline of ``model``, optionally with an unlearned U-Net (SDXL), transformer (SD3,
    Flux) or CLIP-L text encoder, on ``device``."""

    if family not in ("sdxl", "sd3", "flux"):
        raise AmsmoothError(f"a transformer replaces an SD3 or Flux transformer; {model} is not an SD3/Flux pipeline")
    if kind not in KINDS:
        raise AmsmoothError(f"unknown pipeline kind {kind!r}; choose one of {', '.join(KINDS)}")
    if unet and family != "sdxl":
        raise AmsmoothError(f"{family} has a transformer, not a U-Net: pass --transformer instead of --unet")
    if transformer and family == "sdxl":
        raise AmsmoothError("SDXL has a U-Net, not a transformer: pass --unet instead of --transformer")
    offline = hub_offline(local_files_only)
    cls = pipeline_class(family, kind)
    if model in TINY_FAMILIES:
        pipe = tiny_family_pipeline(model, kind)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        try:
            if Path(model).is_file():
                pipe = cls.from_single_file(model, local_files_only=offline, **dtype_kwargs(dtype))
            else:
                pipe = cls.from_pretrained(model, local_files_only=offline, **dtype_kwargs(dtype))
        except (OSError, ValueError) as e:
            raise fetch_error("model", model, offline, e) from None
    if unet:
        load_unet_weights(pipe.unet, unet, local_files_only=local_files_only)
    if transformer:
        load_transformer_weights(pipe.transformer, transformer)
    if text_encoder:
        load_text_encoder_weights(pipe, text_encoder, local_files_only=local_files_only)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_transformer_weights(transformer: torch.nn.Module, path: str) -> None:
    """Replace an SD3 / Flux transformer's weights in place: a diffusers folder (``transformer/`` or
    config.json + weights) or a ``.safetensors``/weights-only ``.pt`` state dict in the diffusers layout, or in
    the original layout (converted with diffusers' converter for the real-size architecture). Checked before
    anything is copied; on a mismatch the transformer is unchanged."""

    kind = source_kind(path)
    if kind == "file":
        state = read_state_dict(path)
        mine = transformer.state_dict()
        if not any(k in mine for k in state):
            state = _convert_original(transformer, state, path)
        apply_state_dict(transformer, state, path, "transformer")
        return
    other = type(transformer).from_pretrained(*_folder(path, kind))
    apply_state_dict(transformer, other.state_dict(), path, "transformer")


def _folder(path: str, kind: str) -> tuple[str, ...]:
    if kind == "folder" and (Path(path) / "transformer" / "config.json").is_file():
        return path, "transformer"
    return (path,)


def _convert_original(transformer: torch.nn.Module, state: dict, path: str) -> dict:
    from diffusers.loaders import single_file_utils as sf

    name = type(transformer).__name__
    convert = {"FluxTransformer2DModel": sf.convert_flux_transformer_checkpoint_to_diffusers,
               "SD3Transformer2DModel": sf.convert_sd3_transformer_checkpoint_to_diffusers}.get(name)
    if convert is None:
        raise AmsmoothError(f"{path}: no converter for a {name}")
    try:
        return convert(dict(state))
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise AmsmoothError(f"{path}: not a diffusers-layout {name} state dict, and diffusers' converter for the "
                            f"original layout failed ({type(e).__name__}: {str(e)[:120]})") from None


def load_family_views(source: str, family: str | None = None,
                      local_files_only: bool | None = None) -> list[EncoderView]:
    """The text encoders of an SDXL/SD3/Flux source as :class:`EncoderView` objects, without loading the
    denoiser or the VAE (a tiny name builds only its text models)."""
    family = family or family_of_source(source, hub_offline(local_files_only))
    if family is None:
        raise AmsmoothError(f"{source} is not an SDXL, SD3 or Flux pipeline (nor tiny-sdxl, tiny-sd3, tiny-flux)")
    slots = family_slots(family)
    if source in TINY_FAMILIES:
        parts = tiny_text_parts(family)
    else:
        parts = _pretrained_text_parts(source, slots, hub_offline(local_files_only))
    return [EncoderView(parts[s.model], parts[s.tokenizer], s) for s in slots if parts.get(s.model) is not None]


def _pretrained_text_parts(source: str, slots: tuple, offline: bool) -> dict:
    import transformers

    index = json.loads(Path(_index_file(source, offline)).read_text())
    parts = {}
    try:
        for s in slots:
            for attr in (s.model, s.tokenizer):
                lib, name = (index.get(attr) or [None, None])[:2]
                if name is None:
                    continue
                parts[attr] = getattr(transformers, name).from_pretrained(source, subfolder=attr,
                                                                          local_files_only=offline)
    except (OSError, ValueError) as e:
        raise fetch_error("text encoders", source, offline, e) from None
    return parts


def _index_file(source: str, offline: bool) -> str:
    if (Path(source) / "model_index.json").is_file():
        return str(Path(source) / "model_index.json")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, "model_index.json", local_files_only=offline)
