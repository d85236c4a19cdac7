"""Load SDXL, SD3 and Flux pipelines (diffusers folders, Hub ids, single-file checkpoints, tiny) and unlearned
weights for their denoisers, for :func:`amsmooth.loading.load_pipeline`.

SD 1.x/2.x models are left to :mod:`amsmooth.loading` (this module answers None for them). Replacement weights
are checked key by key and shape by shape before anything is copied (``weights.apply_state_dict``); pickles are
never unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..hub import fetch_error, hub_offline
from ..weights import (
    apply_state_dict,
    dtype_kwargs,
    load_text_encoder_weights,
    load_unet_weights,
    read_state_dict,
    source_kind,
)
from .tiny import TINY_FAMILIES

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
        from .tiny import tiny_family_pipeline

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


def load_family_views(source: str, family: str | None = None, local_files_only: bool | None = None) -> list:
    """The text encoders of an SDXL/SD3/Flux source as :class:`EncoderView` objects, without loading the
    denoiser or the VAE (a tiny name builds only its text models)."""
    from .registry import family_slots
    from .views import EncoderView

    family = family or family_of_source(source, hub_offline(local_files_only))
    if family is None:
        raise AmsmoothError(f"{source} is not an SDXL, SD3 or Flux pipeline (nor tiny-sdxl, tiny-sd3, tiny-flux)")
    slots = family_slots(family)
    if source in TINY_FAMILIES:
        from .tiny import tiny_text_parts

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
