"""Batch-invariant batched generation: the batch-dependent layers of the denoiser, and the VAE, per prompt.

On CPU (MKL / oneDNN) a GEMM takes a different kernel path when its row count changes, so the same sample comes
out with other float32 roundings (≈1e-6) in a larger batch, and after a few sampler steps a pixel can move by
one grey level. Measured on the tiny SD and the lab pipelines (1 thread):

- U-Net, a 16-row batch against 4-row ones: with its ``Linear`` layers per-prompt it still differed by ≈1.3e-6;
  with its 1×1 ``Conv2d`` layers too (attention ``proj_in`` / ``proj_out``, ResNet shortcuts: GEMMs over
  batch × pixels), by 0 — the same as with every convolution per-prompt. Its 3×3 convolutions, attention and
  element-wise ops were per-sample exact.
- VAE decoder, 3 images against 1: a ``GroupNorm`` was the first layer to differ (4.8e-7), so ``GroupNorm`` is
  per-prompt in the denoiser too, and the VAE decodes one prompt's images per call (it runs once per image).

Within :func:`per_prompt_small_gemms` each such layer computes its input in ``prompts`` chunks of
``batch / prompts`` rows — exactly the rows one prompt brings alone, in the same shape — so a prompt's images do
not depend on the batch it shares. The rest (the U-Net's 3×3 convolutions and attention, the sampler, the
pipeline's Python overhead) still runs once on the whole batch, which is where batching saves time. These are
measurements of CPU kernels; on a GPU, cuDNN / cuBLAS may choose other algorithms per batch size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _component(pipe: Any, names: tuple[str, ...]) -> torch.nn.Module | None:
    """The first of ``names`` that ``pipe`` (or the pipeline it wraps: ``.pipe``, ``.safe``) has as a module."""
    for name in names:
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return model
    inner = getattr(pipe, "pipe", None) or getattr(pipe, "safe", None)
    return _component(inner, names) if inner is not None and inner is not pipe else None


def denoiser(pipe: Any) -> torch.nn.Module | None:
    """The pipeline's U-Net (or transformer), or None."""
    return _component(pipe, ("unet", "transformer"))


def _batch_dependent(m: torch.nn.Module) -> bool:
    """A denoiser layer whose float roundings depend on the batch on CPU: ``Linear``, 1×1 ``Conv2d`` (a GEMM over
    batch × pixels), ``GroupNorm``."""
    return isinstance(m, (torch.nn.Linear, torch.nn.GroupNorm)) or (
        isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1))


@contextlib.contextmanager
def per_prompt_small_gemms(pipe: Any, prompts: int) -> Iterator[None]:
    """Within the block, every batch-dependent layer of ``pipe``'s denoiser (``Linear``, 1×1 ``Conv2d``,
    ``GroupNorm``) given an input whose batch dimension (dim 0) is a multiple of ``prompts`` computes it as
    ``prompts`` calls on ``batch / prompts`` rows, and the VAE decodes one prompt's images per call: same output
    shapes, same values as the rows of a one-prompt call. ``prompts`` ≤ 1: nothing changes."""
    unet, vae = denoiser(pipe), _component(pipe, ("vae",))
    if prompts <= 1:
        yield
        return
    layers = [m for m in unet.modules() if _batch_dependent(m)] if unet is not None else []
    for m in layers:
        m.forward = _chunked(m, prompts)           # an instance attribute shadows the class's forward
    if vae is not None:
        vae.decode = _chunked_decode(vae, prompts)
    try:
        yield
    finally:
        for m in layers:
            del m.forward
        if vae is not None:
            del vae.decode


def _chunked_decode(vae: torch.nn.Module, prompts: int) -> Any:
    """``vae.decode`` one prompt's latents at a time (``[B, C, h, w]`` in ``prompts`` chunks), as diffusers returns
    it (``DecoderOutput`` or a tuple)."""
    own = type(vae).decode.__get__(vae)

    def decode(z: torch.Tensor, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        if z.shape[0] < prompts or z.shape[0] % prompts:
            return own(z, *args, return_dict=return_dict, **kwargs)
        sample = torch.cat([own(c, *args, return_dict=False, **kwargs)[0] for c in z.split(z.shape[0] // prompts)])
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)
    return decode


def _chunked(module: torch.nn.Module, prompts: int) -> Any:
    """``module``'s forward, computed in ``prompts`` calls on an input whose rows (dim 0) split evenly."""
    own = type(module).forward.__get__(module)    # the class's forward (a subclass, e.g. LoRA, may add to it)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.ndim < 2 or x.shape[0] < prompts or x.shape[0] % prompts:
            return own(x, *args, **kwargs)
        return torch.cat([own(c, *args, **kwargs) for c in x.split(x.shape[0] // prompts)])
    return forward
