"""What the unlearning tests share: a U-Net's weights before an edit, and which tensors an edit changed."""
from __future__ import annotations

import torch


def snapshot(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``unet``'s state dict."""
    return {k: v.clone() for k, v in unet.state_dict().items()}


def changed(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> set[str]:
    """Names of the tensors of ``state`` that differ from ``original``."""
    return {k for k, v in state.items() if not torch.equal(v, original[k])}
