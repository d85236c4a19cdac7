"""Naive median smoothing at the U-Net (Sec. 3.2): every conditional noise prediction is the element-wise median of
n predictions under n noisy conditionings (about n× the U-Net cost). ``--smoothing-stage unet``."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..errors import AmsmoothError
from ..smoothing import median_smooth

STAGES = ("text", "unet")


@contextlib.contextmanager
def unet_median_smoothing(unet: torch.nn.Module, conds: torch.Tensor, max_batch: int = 64) -> Iterator[None]:
    """Within the block, the U-Net's conditional prediction is median_i ε(x_t, conds[i], t) (Sec. 3.2).

    ``conds``: ``[n, N, L, D]`` noisy conditionings for the N conditional rows. With classifier-free guidance the
    pipeline's batch is ``[uncond (N); cond (N)]``: the unconditional half is predicted plainly.
    """
    original = unet.forward
    n, N = conds.shape[:2]

    def forward(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        rows = sample.shape[0]
        if rows not in (N, 2 * N):
            raise AmsmoothError(f"U-Net smoothing expected a batch of {N} or {2 * N} rows, got {rows}")
        t = timestep[-N:] if torch.is_tensor(timestep) and timestep.ndim == 1 else timestep
        cond_x = sample[-N:]
        preds = []
        for s in range(0, n, max(1, max_batch // N)):
            c = conds[s:s + max(1, max_batch // N)]
            m = c.shape[0]
            tt = t.repeat(m) if torch.is_tensor(t) and t.ndim == 1 else t
            out = original(cond_x.repeat(m, *[1] * (cond_x.ndim - 1)), tt, *args,
                           encoder_hidden_states=c.reshape(m * N, *c.shape[2:]).to(sample.dtype),
                           return_dict=False, **kwargs)[0]
            preds.append(out.reshape(m, N, *out.shape[1:]))
        cond_pred = median_smooth(torch.cat(preds))
        if rows == 2 * N:
            t_u = timestep[:N] if torch.is_tensor(timestep) and timestep.ndim == 1 else timestep
            uncond = original(sample[:N], t_u, *args, encoder_hidden_states=encoder_hidden_states[:N],
                              return_dict=False, **kwargs)[0]
            cond_pred = torch.cat([uncond, cond_pred])
        if return_dict:
            return UNet2DConditionOutput(sample=cond_pred)
        return (cond_pred,)

    patched = "forward" in vars(unet)   # an accelerate hook (offload) keeps its own forward on the instance
    unet.forward = forward
    try:
        yield
    finally:
        if patched:
            unet.forward = original
        else:
            del unet.forward
