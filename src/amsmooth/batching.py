"""Batch-invariant batched generation: the few denoiser GEMMs whose rounding depends on the batch, per prompt.

On CPU (MKL) a ``Linear`` on a 2-D input ``[M, C]`` takes a different kernel path for different M, so the same row
comes out with other float32 roundings (≈1e-6) when M changes. In a diffusers U-Net those are the time-embedding
MLP and every ResNet's ``time_emb_proj`` (M = the U-Net batch); the heavy layers (convolutions, attention and
its projections on ``[M, tokens, C]``) gave bit-identical rows for any batch in our measurements. Within
:func:`per_prompt_small_gemms` each such 2-D ``Linear`` is computed in chunks of ``M / prompts`` rows — the rows
one prompt would bring alone — so a prompt's images do not depend on its batch (a handful of tiny extra GEMMs per
step; the U-Net itself still runs once on the whole batch).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def denoiser(pipe: Any) -> torch.nn.Module | None:
    """The pipeline's U-Net (or transformer), or None."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return model
    inner = getattr(pipe, "pipe", None) or getattr(pipe, "safe", None)
    return denoiser(inner) if inner is not None and inner is not pipe else None


@contextlib.contextmanager
def per_prompt_small_gemms(pipe: Any, prompts: int) -> Iterator[None]:
    """Within the block, every ``Linear`` of ``pipe``'s denoiser given a 2-D input ``[M, C]`` with M a multiple of
    ``prompts`` computes it as ``prompts`` GEMMs of ``M / prompts`` rows (output ``[M, C_out]``, same values as
    the rows of a one-prompt call). ``prompts`` ≤ 1: nothing changes."""
    model = denoiser(pipe)
    if prompts <= 1 or model is None:
        yield
        return
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.forward = _chunked(m, prompts)           # an instance attribute shadows Linear.forward
    try:
        yield
    finally:
        for m in linears:
            del m.forward


def _chunked(module: torch.nn.Linear, prompts: int) -> Any:
    """``module``'s forward, computed as ``prompts`` GEMMs on a 2-D input whose rows split evenly."""
    own = type(module).forward.__get__(module)    # the class's forward (a subclass may add to it)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or not x.shape[0] or x.shape[0] % prompts:
            return own(x)
        rows = x.shape[0] // prompts
        return torch.cat([torch.nn.functional.linear(c, module.weight, module.bias) for c in x.split(rows)])
    return forward
