"""Hugging Face Hub helpers shared by every loader (pipelines, U-Nets, text encoders, other families)."""
from __future__ import annotations

import os

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
