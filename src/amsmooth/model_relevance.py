"""Model-aware token relevance: what a token does to the *erased* U-Net, not to the text encoder.

Algorithm 1 scores token j by cos(T(y) − T(y∖j), Δ_tgt) in the encoder's output space. This module lifts the same
differential to the noise prediction of the model being defended:

    Δε_j = ε_erased(x_t, T(y)) − ε_erased(x_t, T(y∖j))          (the token's effect, y∖j = y with token j removed)
    d    = mean_k ε_ref(x_t, T(y+_k)) − ε_ref(x_t, T(y−_k))      (the concept's effect on the reference model)
    sim_j = cos(Δε_j, d), over the flattened [P, C, H, W] of a fixed set of P probes (x_t, t)

so a token scores high when removing it moves the erased model's prediction away from where the reference (the
model before erasure) goes for the concept — whatever the token's words. It needs both U-Nets and (m+1)·P U-Net
evaluations per prompt of m tokens, so it is the lab table's *oracle* arm (an upper bound on what a text-only score
can give), not the default. σ_j = σ0·exp(k·sim_j) as in Sec. 3.4.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .concepts import BUILTIN, Concept, builtin_pairs_path, read_pairs
from .config import SmoothingConfig
from .encoders import TextEncoder, TokenizedBatch
from .errors import AmsmoothError
from .relevance import WordCache, concept_cosine, noise_schedule, removals
from .smoothing import AdaptiveMedianSmoothing, Relevance


@dataclass(frozen=True)
class Probes:
    """P fixed probe points of the denoising chain: ``x`` ``[P, C, H, W]`` and timesteps ``t`` ``[P]``."""

    x: torch.Tensor
    t: torch.Tensor


def make_probes(sample_shape: Sequence[int], timesteps: Sequence[int], per_timestep: int,
                generator: torch.Generator | None) -> Probes:
    """``per_timestep`` standard-normal x_t for each timestep (the prediction's input at pure noise level)."""
    t = torch.tensor([s for s in timesteps for _ in range(per_timestep)], dtype=torch.long)
    x = torch.randn((len(t), *sample_shape), generator=generator, dtype=torch.float32)
    return Probes(x, t)


def epsilon(unet: Any, probes: Probes, cond: torch.Tensor, max_batch: int = 64) -> torch.Tensor:
    """ε(x_p, t_p, c_m) for every condition m and probe p: ``cond`` ``[M, L, D]`` → ``[M, P, C, H, W]``."""
    M, P = cond.shape[0], probes.x.shape[0]
    dev, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    x = probes.x.to(dev, dtype).repeat(M, 1, 1, 1)
    t = probes.t.to(dev).repeat(M)
    c = cond.to(dev, dtype).repeat_interleave(P, dim=0)
    outs = []
    with torch.no_grad():
        for s in range(0, M * P, max_batch):
            sl = slice(s, s + max_batch)
            outs.append(unet(x[sl], t[sl], encoder_hidden_states=c[sl]).sample.float())
    return torch.cat(outs).reshape(M, P, *probes.x.shape[1:])


def concept_epsilon_direction(ref_unet: Any, encoder: TextEncoder, positives: Sequence[str],
                              negatives: Sequence[str], probes: Probes) -> torch.Tensor:
    """d = mean_k ε_ref(T(y+_k)) − ε_ref(T(y−_k)) on the probes: ``[P, C, H, W]``."""
    if not positives or len(positives) != len(negatives):
        raise AmsmoothError("the model-aware concept direction needs equally many positive and negative prompts")
    total = None
    for s in range(0, len(positives), 16):
        emb = encoder.encode(list(positives[s:s + 16]) + list(negatives[s:s + 16])).float()
        eps = epsilon(ref_unet, probes, emb)
        half = eps.shape[0] // 2
        diff = (eps[:half] - eps[half:]).sum(0)
        total = diff if total is None else total + diff
    return total / len(positives)


def token_effect_sims(unet: Any, encoder: TextEncoder, content_ids: Sequence[int], probes: Probes,
                      direction: torch.Tensor) -> torch.Tensor:
    """cos(ε(T(y)) − ε(T(y∖j)), d) for each of the m prompt tokens j: ``[m]``."""
    if not content_ids:
        return torch.zeros(0)
    ids, mask = encoder.build_ids(removals(content_ids))
    cond = encoder.encode_chunked(ids, mask, 512)
    eps = epsilon(unet, probes, cond)
    return concept_cosine(eps[:1] - eps[1:], direction.unsqueeze(0))[:, 0].cpu()


class ModelAwareSmoothing(AdaptiveMedianSmoothing):
    """AMS whose σ comes from :func:`token_effect_sims` on the defended (erased) U-Net (cached per prompt)."""

    def __init__(self, encoder: TextEncoder, concepts: Sequence[Concept], config: SmoothingConfig,
                 unet: Any, direction: torch.Tensor, probes: Probes) -> None:
        super().__init__(encoder, concepts, config)
        self.unet, self.direction, self.probes = unet, direction, probes
        self.prompt_cache = WordCache(config.cache_size)   # per prompt's token ids, bounded like the word cache

    def _effects(self, content_ids: tuple[int, ...]) -> torch.Tensor:
        sims = self.prompt_cache.get(content_ids)
        if sims is None:
            sims = token_effect_sims(self.unet, self.encoder, content_ids, self.probes, self.direction)
            self.prompt_cache.put(content_ids, sims)
        return sims

    def scores(self, batch: TokenizedBatch) -> Relevance:
        """sim ``[B, L]`` at the prompt tokens (0 elsewhere), then σ; sim_local = sim, no global part."""
        sim = torch.zeros(len(batch), self.encoder.max_length)
        for b in range(len(batch)):
            ids = tuple(batch.content_ids[b])
            if ids:
                start = int(batch.content_mask[b].nonzero()[0])
                sim[b, start:start + len(ids)] = self._effects(ids)
        sim = sim * batch.content_mask
        sigma = noise_schedule(sim, self.sigma0, self.config.k, batch.content_mask, self.config.noise_special_tokens)
        return Relevance(sim, sim, None, sigma)


# The probes and pairs of the oracle arm (docs/lab.md): 3 timesteps × 2 draws, the concept's first 32 pairs.
PROBE_TIMESTEPS = (250, 500, 750)
PROBES_PER_TIMESTEP = 2
MAX_PAIRS = 32


def model_aware_settings(reference: str) -> dict[str, Any]:
    """What a run records of the model-aware relevance (``defense_config``)."""
    return {"relevance": "model-aware", "model_aware_reference": reference, "probe_timesteps": list(PROBE_TIMESTEPS),
            "probes_per_timestep": PROBES_PER_TIMESTEP, "probe_seed": 0, "max_pairs": MAX_PAIRS}


def attach_model_aware(pipeline: Any, reference_unet: Any, concept: str) -> None:
    """Replace the AMS relevance of a defended single-encoder U-Net pipeline by :class:`ModelAwareSmoothing`:
    token effects on ``pipeline.unet`` toward ``reference_unet``'s ε-direction of the built-in ``concept``."""
    defense = getattr(pipeline, "defense", None)
    if defense is None or len(defense.views) != 1 or getattr(pipeline, "unet", None) is None:
        raise AmsmoothError("model-aware relevance needs an AMS-defended pipeline with one text encoder and a U-Net "
                            "(SD 1.x/2.x, the lab model)")
    if concept not in BUILTIN:
        raise AmsmoothError(f"model-aware relevance needs a built-in concept's prompt pairs, got {concept!r}")
    pos, neg, _ = read_pairs(builtin_pairs_path(concept))
    unet = pipeline.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    probes = make_probes(shape, PROBE_TIMESTEPS, PROBES_PER_TIMESTEP, torch.Generator().manual_seed(0))
    view = defense.views[0]
    old = defense.ams[view.slot.name]
    direction = concept_epsilon_direction(reference_unet, view, pos[:MAX_PAIRS], neg[:MAX_PAIRS], probes)
    defense.ams[view.slot.name] = ModelAwareSmoothing(view, old.concepts, old.config, unet, direction, probes)
