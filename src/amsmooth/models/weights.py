"""Unlearned weights into a pipeline: replacement U-Nets and text encoders, checked before anything is copied.

A replacement U-Net may be a diffusers folder, a ``.safetensors`` file or a ``.pt``/``.ckpt`` state dict in the
diffusers layout or the original CompVis/LDM layout (converted with diffusers' own converter). A replacement
text encoder may be a ``CLIPTextModel`` folder or a state dict. Every replacement is checked key by key and shape
by shape against the pipeline before anything is copied, so a bad file leaves the pipeline untouched.
Pickles are never unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``.
Used by :mod:`amsmooth.loading` (SD 1.x/2.x) and :mod:`amsmooth.models.load` (SDXL, SD3, Flux).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError, first_line
from .hub import fetch_error, hub_offline

LDM_UNET_PREFIX = "model.diffusion_model."
_LDM_UNET_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_WEIGHT_SUFFIXES = (".safetensors", *_TORCH_SUFFIXES)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(/[\w.-]+)*$")  # owner/repo[/subfolder...]
# CLIP text-config fields that change the computation without changing any weight shape.
_TEXT_ARCH_FIELDS = ("hidden_act", "num_attention_heads", "layer_norm_eps")
_TEXT_PREFIXES = ("cond_stage_model.transformer.", "text_encoder.", "text_model.")


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed from_pretrained's torch_dtype to dtype (huggingface/diffusers#14205; the old name warns)."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


# ------------------------------------------------------------------------------------------------ U-Net

def load_unet_weights(unet: torch.nn.Module, path: str, *, local_files_only: bool | None = None) -> None:
    """Replace the weights of ``unet`` (a ``UNet2DConditionModel``) in place with those at ``path``.

    path: a diffusers folder (``unet/`` subfolder or config.json + weights), a Hugging Face id
    ``owner/repo[/subfolder]``, a ``.safetensors`` file, or a ``.pt``/``.pth``/``.ckpt``/``.bin`` state dict in the
    diffusers or CompVis/LDM layout. Raises AmsmoothError, with the U-Net unchanged, if anything does not fit.
    """
    kind = source_kind(path)
    if kind == "file":
        state, layout = unet_state_dict(read_state_dict(path), unet.config, path)
        apply_state_dict(unet, state, f"{path} ({layout} layout)", "U-Net")
        return
    other = _pretrained_unet(path, kind, unet.dtype, local_files_only)
    _check_config(_arch(unet.config), _arch(other.config), path, "U-Net")
    apply_state_dict(unet, other.state_dict(), path, "U-Net")


def unet_state_dict(raw: Mapping[str, Any], config: Mapping[str, Any],
                    source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(diffusers-layout U-Net state dict, layout name) from a loaded checkpoint of either layout.

    LDM checkpoints (``model.diffusion_model.input_blocks...``, whole-model or U-Net only, prefix optional) are
    converted with ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` for the pipeline's config.
    """
    raw = _unwrap(raw, source)
    if not any(k.startswith((LDM_UNET_PREFIX, *_LDM_UNET_ROOTS)) for k in raw):
        return _tensors(raw, source), "diffusers"
    if not any(k.startswith(LDM_UNET_PREFIX) for k in raw):
        raw = {LDM_UNET_PREFIX + k: v for k, v in raw.items()}
    ldm = _tensors({k: v for k, v in raw.items() if k.startswith(LDM_UNET_PREFIX)}, source)
    return _convert_ldm_unet(ldm, config, source), "CompVis/LDM"


def _convert_ldm_unet(ldm: dict[str, torch.Tensor], config: Mapping[str, Any],
                      source: str) -> dict[str, torch.Tensor]:
    """diffusers' converter, plus a check that it used every U-Net tensor of the file (it skips unknown keys)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    try:
        out = convert_ldm_unet_checkpoint(ldm, dict(config))
    except (KeyError, IndexError, ValueError) as e:
        raise AmsmoothError(f"{source}: cannot convert its CompVis/LDM U-Net weights for the pipeline's U-Net "
                            f"({type(e).__name__}: {first_line(e)})") from None
    used = {id(v) for v in out.values()}
    unused = [k for k, v in ldm.items() if id(v) not in used]
    if unused:
        raise AmsmoothError(f"{source} does not fit the pipeline's U-Net: {len(unused)} CompVis/LDM keys have no "
                            f"place in it, such as {_some(unused)}")
    return out


def _pretrained_unet(path: str, kind: str, dtype: torch.dtype, local_files_only: bool | None):  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    where, sub = _pretrained_location(path, kind, "unet", "diffusion_pytorch_model")
    offline = hub_offline(local_files_only)
    try:
        return UNet2DConditionModel.from_pretrained(where, subfolder=sub, local_files_only=offline,
                                                    **dtype_kwargs(dtype))
    except (OSError, ValueError) as e:
        raise fetch_error("a U-Net", path, offline, e) from None


# ------------------------------------------------------------------------------------------------ text encoder

def load_text_encoder_weights(pipe, path: str, *, local_files_only: bool | None = None) -> None:  # noqa: ANN001
    """Replace the weights of ``pipe.text_encoder`` in place with those at ``path``.

    path: a ``CLIPTextModel`` folder (e.g. AdvUnlearn's), a Hugging Face id ``owner/repo[/subfolder]`` (e.g.
    ``OPTML-Group/AdvUnlearn/nudity_unlearned``), a diffusers pipeline folder (its ``text_encoder/``), or a
    ``.safetensors``/``.pt`` state dict of the pipeline's text encoder. Raises AmsmoothError, with the text
    encoder unchanged, if anything does not fit.
    """
    target = pipe.text_encoder
    kind = source_kind(path)
    if kind == "file":
        state = _text_encoder_keys(_tensors(_unwrap(read_state_dict(path), path), path), target)
        apply_state_dict(target, state, path, "text encoder")
        return
    other = _pretrained_text_encoder(path, kind, type(target), local_files_only)
    mine, theirs = target.config.to_dict(), other.config.to_dict()
    _check_config({f: mine.get(f) for f in _TEXT_ARCH_FIELDS}, {f: theirs.get(f) for f in _TEXT_ARCH_FIELDS},
                  path, "text encoder")
    apply_state_dict(target, other.state_dict(), path, "text encoder")


def _text_encoder_keys(state: dict[str, torch.Tensor], target: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``state`` to the target's keys, ignoring wrapper prefixes that differ between checkpoints
    (``text_model.`` before transformers 5, LDM's ``cond_stage_model.transformer.``, a pipeline's
    ``text_encoder.``); drop ``position_ids`` buffers the target does not keep."""
    names = {_strip(k, _TEXT_PREFIXES): k for k in target.state_dict()}
    out = {names.get(_strip(k, _TEXT_PREFIXES), k): v for k, v in state.items()}
    if len(out) < len(state):
        raise AmsmoothError(f"{len(state) - len(out)} keys of the text-encoder file are duplicates once the "
                            f"prefixes {', '.join(_TEXT_PREFIXES)} are ignored")
    return {k: v for k, v in out.items() if k in names.values() or not k.endswith("position_ids")}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    while key.startswith(prefixes):
        key = key[len(next(p for p in prefixes if key.startswith(p))):]
    return key


def _pretrained_text_encoder(path: str, kind: str, cls: type, local_files_only: bool | None):  # noqa: ANN202
    where, sub = _pretrained_location(path, kind, "text_encoder", "model")
    offline = hub_offline(local_files_only)
    kwargs = {"subfolder": sub} if sub else {}
    try:
        return cls.from_pretrained(where, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as e:
        raise fetch_error("a text encoder", path, offline, e) from None


# ------------------------------------------------------------------------------------------------ files

def source_kind(path: str) -> str:
    """'file', 'folder' or 'hub' — or an AmsmoothError saying why it is none of them."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in _WEIGHT_SUFFIXES:
            raise AmsmoothError(f"{path}: unsupported weights file; expected one of {', '.join(_WEIGHT_SUFFIXES)}"
                                f" or a folder")
        return "file"
    if p.is_dir():
        return "folder"
    if p.suffix.lower() in _WEIGHT_SUFFIXES or not HUB_ID.match(path):
        raise AmsmoothError(f"weights not found: {path} (no such file or folder)")
    return "hub"


def _pretrained_location(path: str, kind: str, component: str, weights: str) -> tuple[str, str | None]:
    """(folder or repo id, subfolder) for from_pretrained: a pipeline folder's component, or the folder itself."""
    if kind == "hub":
        parts = path.split("/")
        return "/".join(parts[:2]), ("/".join(parts[2:]) or None)
    p = Path(path).expanduser()
    if (p / component / "config.json").is_file():
        return str(p), component
    if (p / "config.json").is_file():
        return str(p), None
    inner = sorted(q.name for q in p.iterdir() if (q / "config.json").is_file()) if p.is_dir() else []
    if inner:   # a release that holds several models in subfolders, e.g. AdvUnlearn's nudity_unlearned/, …
        raise AmsmoothError(f"{path}: folder holds several models in subfolders; pass one of them: "
                            f"{', '.join(str(p / q) for q in inner[:5])}{', …' if len(inner) > 5 else ''}")
    raise AmsmoothError(f"{path}: folder has neither {component}/config.json nor config.json (with "
                        f"{weights}.safetensors); pass a diffusers folder, or the weights file itself")


def read_state_dict(path: str) -> dict[str, Any]:
    """The raw mapping stored in a .safetensors file or a weights-only torch file (never arbitrary pickles)."""
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise AmsmoothError(f"cannot read {path} as safetensors: {first_line(e)}") from None
    return _torch_load(path)


def _torch_load(path: str) -> dict[str, Any]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise AmsmoothError(
            f"{path} holds Python objects besides tensors ({_unpickler_reason(e)}) and is not unpickled, for "
            f"safety; re-save just its state dict (of tensors), or convert it to .safetensors") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise AmsmoothError(f"cannot read {path} as a torch state dict: {first_line(e)[:200]}") from None
    if not isinstance(obj, Mapping):
        raise AmsmoothError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _unpickler_reason(err: Exception) -> str:
    """The 'Unsupported global: GLOBAL x.y' part of torch's long weights-only message, when it has one."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    return f"it needs {m.group(1)}" if m else "weights_only=True refused it"


def _unwrap(raw: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The state dict itself, also when nested under 'state_dict' (Lightning / CompVis checkpoints)."""
    while "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not raw:
        raise AmsmoothError(f"{source} holds no weights")
    return raw


def _tensors(raw: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise AmsmoothError(f"{source} is not a flat state dict: {len(bad)} entries are not tensors, such as "
                            f"{_some(bad)}")
    return dict(raw)


# ------------------------------------------------------------------------------------------------ checks

def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """One line describing how ``found`` fails to fit ``expected`` (keys, then shapes), or None if it fits."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        return (f"{len(missing)} missing keys such as {_some(missing)}, {len(unexpected)} unexpected such as "
                f"{_some(unexpected)} (expected {len(expected)} keys, found {len(found)})")
    for k, v in expected.items():
        if found[k].shape != v.shape:
            return f"shape mismatch at {k}: file has {tuple(found[k].shape)}, pipeline expects {tuple(v.shape)}"
    return None


def apply_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Copy ``state`` into ``module`` (cast to its dtype/device) after checking every key and shape first."""
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise AmsmoothError(f"{source} does not fit the pipeline's {what}: {problem}")
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def _arch(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture fields of a diffusers U-Net config (not the default image size, which the pipeline may
    rewrite), lists and tuples made comparable."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_") and k != "sample_size"}


def _check_config(mine: Mapping[str, Any], theirs: Mapping[str, Any], source: str, what: str) -> None:
    diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if diff:
        k = diff[0]
        raise AmsmoothError(f"{source}: its {what} config differs from the pipeline's in {len(diff)} fields, such "
                            f"as {k} = {theirs.get(k)!r} (pipeline: {mine.get(k)!r})")


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) if keys else "none"
