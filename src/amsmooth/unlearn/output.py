"""Writing an unlearned U-Net: a diffusers-layout ``.safetensors`` state dict and a JSON sidecar next to it."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..io import atomic_write_json, check_output_file, umask_mode, write_failed


def sidecar_path(out: Path) -> Path:
    """``unet.safetensors`` → ``unet.json``."""
    return out.with_suffix(".json")


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output path, checked before any work: a ``.safetensors`` name in an existing, writable folder, and
    neither it nor its sidecar already there unless ``overwrite``. One AmsmoothError otherwise."""
    out = Path(path).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise AmsmoothError(f"--out {path}: the U-Net is written as safetensors; give a file name ending in "
                            f".safetensors")
    if out.is_dir():
        raise AmsmoothError(f"--out {path} is a folder; give a file name ending in .safetensors")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise AmsmoothError(f"--out {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise AmsmoothError(f"--out {path}: folder {parent} is not writable")
    for p in (out, sidecar_path(out)):
        check_output_file(p, overwrite=overwrite)     # any existing file is refused unless --overwrite
    return out


def save_unet(state: Mapping[str, torch.Tensor], out: Path, sidecar: Mapping[str, Any]) -> None:
    """Write the state dict (tensors only, CPU, contiguous) atomically, then the sidecar. Same tensors → same
    bytes. Both files get the umask's mode (safetensors creates 0600 files; the sidecar is a plain write)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, umask_mode())
        os.replace(tmp, out)
    except OSError as e:
        raise write_failed(out, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(sidecar_path(out), dict(sidecar))
