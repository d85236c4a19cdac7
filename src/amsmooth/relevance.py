"""Token relevance to a concept (Sec. 3.4, Algorithm 1) as small tensor functions, plus a per-word cache.

DiffEmbed(y, i) = T(y) − T(y without token i); sim = cos(DiffEmbed, Δ_tgt) over the flattened ``[L, D]``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch

from .config import SIGMA_MAX
from .errors import AmsmoothError


def removals(ids: Sequence[int]) -> list[tuple[int, ...]]:
    """The sequence itself, then the sequence with each token removed (closed up): 1 + len(ids) tuples."""
    ids = tuple(ids)
    return [ids] + [ids[:i] + ids[i + 1:] for i in range(len(ids))]


def differential_embeddings(full: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """DiffEmbed for every removed token: ``full`` ``[L, D]``, ``without`` ``[m, L, D]`` → ``[m, L, D]``."""
    return full.unsqueeze(0) - without


def concept_cosine(diffs: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """cos(Δ_i, Δ_tgt,c) over flattened embeddings: ``[m, L, D]`` × ``[C, L, D]`` → ``[m, C]`` (float32)."""
    a = torch.nn.functional.normalize(diffs.flatten(1).float(), dim=1)
    b = torch.nn.functional.normalize(directions.flatten(1).float().to(a.device), dim=1)
    return a @ b.T


def combine_global(sim_local: torch.Tensor, sim_global: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's rule: sim = max(sim, (sim + sim_glb) / 2), element-wise (raises sim only if glb > sim)."""
    return torch.maximum(sim_local, (sim_local + sim_global) / 2)


def noise_schedule(sim: torch.Tensor, sigma0: float, k: float, prompt_mask: torch.Tensor,
                   noise_special_tokens: bool = False) -> torch.Tensor:
    """σ_j = σ0·exp(k·sim_j) on prompt tokens; special tokens get 0 (or σ0 if configured). ``[B, L]``.

    A σ above SIGMA_MAX on a prompt token is refused (AmsmoothError), never clamped."""
    sigma = sigma0 * torch.exp(k * sim.float())
    drawn = sigma[prompt_mask]
    if drawn.numel() and not float(drawn.max()) <= SIGMA_MAX:
        raise AmsmoothError(f"a token's noise σ = σ0·exp(k·sim) = {float(drawn.max()):.4g} (sim "
                            f"{float(sim[prompt_mask].float().max()):.3f}) exceeds {SIGMA_MAX:g}, the largest "
                            "amsmooth draws (it would drown the prompt); lower --k or --sigma0")
    other = torch.full_like(sigma, sigma0 if noise_special_tokens else 0.0)
    return torch.where(prompt_mask, sigma, other)


class WordCache:
    """Bounded LRU of local relevance per word: key = the word's token ids, value ``[len(word), C]``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def is_high(sigma: float, sigma0: float) -> bool:
    """A token is highlighted when its noise is at least doubled: σ ≥ 2σ0 (sim ≥ ln 2 / k)."""
    return sigma0 > 0 and sigma >= 2 * sigma0
