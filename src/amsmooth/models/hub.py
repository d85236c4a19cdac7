"""Hugging Face Hub helpers shared by every loader (pipelines, U-Nets, text encoders, other families)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import AmsmoothError, first_line

_TRUE = {"1", "true", "yes", "on"}


def hub_offline(local_files_only: bool | None = None) -> bool:
    """Whether to stay off the network: ``local_files_only`` when given, else ``HF_HUB_OFFLINE``.

    The environment is read now (huggingface_hub reads it once, at import) and huggingface_hub's own constant is
    honoured too, so offline mode set either way — before or after the import — is seen.
    """
    if local_files_only is not None:
        return local_files_only
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def fetch_error(what: str, source: str, offline: bool, err: Exception) -> AmsmoothError:
    """One actionable line for a ``from_pretrained`` of ``source`` (a folder or a Hub id) that failed with ``err``."""
    if Path(source).exists():
        return AmsmoothError(f"cannot load {what} from {source}: {first_line(err)}")
    if offline:
        return AmsmoothError(
            f"cannot load {what} '{source}': offline (HF_HUB_OFFLINE=1 or local_files_only) and not in the "
            f"Hugging Face cache; run `hf download {_repo(source)}` where you have internet, or pass "
            f"the path of a local diffusers folder instead of the id")
    return AmsmoothError(f"cannot load {what} '{source}' from the Hugging Face Hub: {first_line(err)}; "
                         f"check the id, or pass the path of a local diffusers folder")


def _repo(source: str) -> str:
    return "/".join(source.split("/")[:2])


def quiet_environment() -> None:
    """What quiets transformers/diffusers before they are imported, without importing them (the CLI's start)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Keep transformers/diffusers chatter out of the CLI's output (imports both)."""
    quiet_environment()
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
