"""Adaptive Median Smoothing at the text-encoding stage (Sec. 3.4): relevance → σ → n noisy encodings → median."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .concepts import Concept
from .config import SmoothingConfig, check_sigma_limit
from .encoders import TextEncoder, TokenizedBatch
from .errors import AmsmoothError
from .relevance import WordCache, noise_schedule
from .relevance_methods import RawScores, RelevanceContext, combine, method, word_max
from .relevance_scale import scale_for


@dataclass
class Relevance:
    """Scores of a batch, all ``[B, L]`` (0 at special tokens): sim_global is None when global is off."""

    sim: torch.Tensor
    sim_local: torch.Tensor
    sim_global: torch.Tensor | None
    sigma: torch.Tensor


def gaussian_noise(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal draws (float32) on the generator's device, so a CPU generator gives the same bytes anywhere."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32)


Generators = torch.Generator | Sequence[torch.Generator] | None


def prompt_noise(n: int, B: int, L: int, D: int, generator: Generators) -> torch.Tensor:
    """Standard normal noise ``[n, B, L, D]`` in which prompt b's slice depends on nothing but its own generator.

    A sequence gives one generator per prompt (prompt b draws ``[n, L, D]`` from ``generator[b]``); one generator
    (or None: the global RNG) draws ``[n, L, D]`` once and every prompt uses it — what each would get if encoded
    alone with that generator. Either way a prompt's h_0.5 is the same alone or in any batch.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return gaussian_noise((n, 1, L, D), generator).expand(n, B, L, D)
    gens = list(generator)
    if len(gens) != B:
        raise AmsmoothError(f"{len(gens)} smoothing generators for {B} prompts; give one, or one per prompt")
    return torch.stack([gaussian_noise((n, L, D), g) for g in gens], dim=1)


def median_smooth(samples: torch.Tensor) -> torch.Tensor:
    """Element-wise median over the first axis: ``[n, ...]`` → ``[...]`` (the lower median for even n)."""
    return samples.median(dim=0).values


class AdaptiveMedianSmoothing:
    """Token-wise adaptive median smoothing of a text encoder's conditioning.

    ``encode`` returns h_0.5 = median_i T(y + G_i), G_i ~ N(0, diag σ²), σ_j = σ0·exp(k·sim_j) (Sec. 3.4).
    """

    def __init__(self, encoder: TextEncoder, concepts: Sequence[Concept],
                 config: SmoothingConfig | None = None) -> None:
        self.encoder = encoder
        self.concepts = list(concepts)
        self.config = config or SmoothingConfig()
        if not self.concepts:
            raise AmsmoothError("at least one concept is needed (e.g. --concept nudity)")
        for c in self.concepts:
            c.check_encoder(encoder)
        self.directions = torch.stack([c.direction.float() for c in self.concepts]).to(encoder.device)
        self.cache = WordCache(self.config.cache_size)
        self.method = method(self.config.relevance)
        self.method_state: dict = {}
        unit = encoder.embedding_std() if self.config.sigma_unit == "embedding-std" else 1.0
        check_sigma_limit(self.config.sigma0, self.config.k, unit,
                          "embedding std" if self.config.sigma_unit == "embedding-std" else "")
        self.sigma0 = self.config.sigma0 * unit   # σ0 in the embedding's own units

    # ------------------------------------------------------------------ relevance
    def context(self) -> RelevanceContext:
        """What the relevance method reads (the cache as it is now: the server swaps in a shared one)."""
        return RelevanceContext(self.encoder, self.concepts, self.directions, self.config, self.cache,
                                self.method_state)

    def scores(self, batch: TokenizedBatch) -> Relevance:
        """The configured method's scores per concept (unless Algorithm 1: calibrated, and each word's tokens at
        the word's highest score), combined (Algorithm 1's global rule) and max over concepts; then σ."""
        ctx = self.context()
        raw = self.method.fn(ctx, batch)
        if self.method.calibrated:
            raw = RawScores(word_max(scale_for(self.method, ctx).apply(raw.local), batch))
        local, glob = raw.local, raw.glob
        combined = combine(raw)
        sim = combined.max(-1).values * batch.content_mask
        sigma = noise_schedule(sim, self.sigma0, self.config.k, batch.content_mask,
                               self.config.noise_special_tokens)
        return Relevance(sim, local.max(-1).values * batch.content_mask,
                         None if glob is None else glob.max(-1).values * batch.content_mask, sigma)

    def relevance(self, prompts: Sequence[str]) -> list[dict]:
        """Per prompt: ``{"prompt", "tokens": [{token, word, word_index, position, sim, sim_local, sim_global,
        sigma}]}`` for its prompt tokens (special tokens omitted)."""
        batch = self.encoder.tokenize(prompts)
        with torch.no_grad():
            rel = self.scores(batch)
        return [self.describe(batch, rel, b) for b in range(len(batch))]

    def describe(self, batch: TokenizedBatch, rel: Relevance, b: int) -> dict:
        """The :meth:`relevance` record of prompt ``b`` of ``batch``, from its already computed scores ``rel``."""
        tokens = []
        for w_index, positions in enumerate(batch.words(b)):
            word = self.encoder.word_text(batch.input_ids[b, positions].tolist())
            for pos in positions:
                tokens.append({"token": batch.tokens[b][pos], "word": word, "word_index": w_index, "position": pos,
                               "sim": float(rel.sim[b, pos]), "sim_local": float(rel.sim_local[b, pos]),
                               "sim_global": None if rel.sim_global is None else float(rel.sim_global[b, pos]),
                               "sigma": float(rel.sigma[b, pos])})
        return {"prompt": batch.prompts[b], "tokens": tokens, "dropped": batch.dropped[b]}

    # ------------------------------------------------------------------ smoothing
    def noisy_encodings(self, batch: TokenizedBatch, sigma: torch.Tensor, n: int,
                        generator: Generators = None) -> torch.Tensor:
        """h^(i) = T(y + G^(i)) for i = 1..n in one batch (chunked past max_batch): ``[n, B, L, D]``.

        ``generator``: one per prompt, or one for all (see :func:`prompt_noise`: batch-invariant either way)."""
        B, L, D = len(batch), self.encoder.max_length, self.encoder.hidden_size
        z = prompt_noise(n, B, L, D, generator)
        noise = z * sigma.to(z.device, torch.float32)[None, :, :, None]
        ids = batch.input_ids.repeat(n, 1)
        mask = batch.attention_mask.repeat(n, 1)
        h = self.encoder.encode_chunked(ids, mask, self.config.max_batch, noise.reshape(n * B, L, D))
        return h.reshape(n, B, L, D)

    def smooth(self, batch: TokenizedBatch, sigma: torch.Tensor,
               generator: Generators = None) -> torch.Tensor:
        """h_0.5 ``[B, L, D]``; with σ ≡ 0 the plain T(y) (every sample equals it), computed once."""
        if float(sigma.max()) == 0.0:
            return self.encoder.encode(batch, self.config.max_batch)
        return median_smooth(self.noisy_encodings(batch, sigma, self.config.n, generator))

    def encode_batch(self, batch: TokenizedBatch,
                     generator: Generators = None) -> tuple[torch.Tensor, Relevance]:
        """Smoothed conditioning ``[B, L, D]`` and the relevance it used."""
        with torch.no_grad():
            rel = self.scores(batch)
            return self.smooth(batch, rel.sigma, generator), rel

    def encode(self, prompts: Sequence[str], generator: Generators = None) -> torch.Tensor:
        """Smoothed conditioning h_0.5 for prompts: ``[B, L, D]`` in the encoder's dtype; a prompt's row is the same
        alone or in any batch (one generator for all, or one per prompt)."""
        return self.encode_batch(self.encoder.tokenize(prompts), generator)[0]
