"""What a written result records about the software that made it (eval run configs, unlearning sidecars)."""
from __future__ import annotations

import platform


def versions() -> dict[str, str]:
    """The versions of amsmooth, torch, diffusers, transformers and Python."""
    import diffusers
    import torch
    import transformers

    from . import __version__

    return {"amsmooth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
