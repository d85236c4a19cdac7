"""What an attack minimizes, as a function of a candidate prompt's conditioning, plain or through AMS.

:class:`ConditioningObjective` computes the conditioning of candidate prompts (plain, or what the defended pipeline
would use) and the gradient with respect to the searched tokens; subclasses say which loss that conditioning
feeds: :class:`TextObjective` (text-encoder attacks) the distance to a target embedding, the U-Net attacks'
:class:`~amsmooth.attacks.denoising.DenoisingObjective` a noise-prediction error.

Plain (non-adaptive): loss(T(y), h*). Adaptive against AMS: the attacker optimizes the *defended* conditioning,
loss(median_i T(y + G_i), h*) averaged over m independent draws of the n noise samples (expectation over
transformation, EOT); σ comes from the defense's own relevance scores of the candidate. The median blocks useful
gradients (it routes them to one sample per coordinate), so gradients use the straight-through estimator: the
forward value is the median, the backward pass is that of the mean of the n samples.

The smoothing noise comes from the objective's own ``noise_generator`` (set per attacked case from the case's
seed), never from the attack's generator: an adaptive attack draws exactly the same search randomness as the plain
one, so at σ0 = 0 (where AMS returns T(y) itself) it reproduces the plain attack's prompts exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..smoothing import AdaptiveMedianSmoothing, gaussian_noise, median_smooth
from .vocab import Layout, candidate_batch


def mse_loss(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over ``[L, D]``: ``h`` ``[R, L, D]``, ``target`` ``[L, D]`` → ``[R]`` (Ring-A-Bell)."""
    return ((h.float() - target.float()) ** 2).mean(dim=(-2, -1))


def cosine_loss(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − cos(h, target) over the flattened ``[L, D]``: ``[R, L, D]`` → ``[R]`` (QF-Attack's similarity)."""
    return 1 - torch.nn.functional.cosine_similarity(h.float().flatten(1), target.float().flatten()[None], dim=1)


Loss = Literal["mse", "cosine"]
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mse": mse_loss, "cosine": cosine_loss}
Draw = Any   # what ``draw`` returns: smoothing noise [m, n, L, D] or None (text), a UNetDraw (U-Net attacks)


def concept_target(encoder: TextEncoder, prompt: str, direction: torch.Tensor, eta: float) -> torch.Tensor:
    """Ring-A-Bell's target h* = T(prompt) + η·Δ_concept: ``[L, D]`` float32."""
    base = encoder.encode([prompt])[0].float()
    return base + eta * direction.to(base.device, torch.float32)


def straight_through_median(samples: torch.Tensor) -> torch.Tensor:
    """Median over axis 1 of ``[R, n, L, D]`` in the forward pass (exactly), gradient of the mean in the backward
    pass."""
    mean = samples.mean(dim=1)
    return median_smooth(samples.transpose(0, 1)).detach() + (mean - mean.detach())


class CandidatePool:
    """The ``size`` best distinct candidates a search has seen (token ids → its search loss), for re-ranking."""

    def __init__(self, size: int) -> None:
        self.size, self.best = size, {}

    def offer(self, ids: Sequence[int], loss: float) -> None:
        key = tuple(int(i) for i in ids)
        if key not in self.best or loss < self.best[key]:
            self.best[key] = float(loss)
        if len(self.best) > 4 * self.size:                       # keep memory bounded
            self.best = dict(sorted(self.best.items(), key=lambda kv: kv[1])[: self.size])

    def top(self) -> list[tuple[int, ...]]:
        return [k for k, _ in sorted(self.best.items(), key=lambda kv: kv[1])[: self.size]]


class ConditioningObjective:
    """The conditioning of candidate prompts ``prefix + suffix`` (``suffix + prefix`` when ``prepend``), plain or
    through AMS, and a loss of it that subclasses define in :meth:`batch_losses`.

    ``smoothing`` set → adaptive: each candidate's conditioning is the straight-through median of n noisy
    encodings (σ from the defense's scores of that candidate), the loss averaged over ``eot_samples`` draws.
    ``evaluation``: a fixed draw on which a search compares candidates and the result is scored (None: each
    step's own draw is used, as the text attacks do); set by :meth:`fix_evaluation`.
    """

    def __init__(self, encoder: TextEncoder, smoothing: AdaptiveMedianSmoothing | None = None,
                 eot_samples: int = 1, max_batch: int = 256, prepend: bool = False,
                 layout: Layout | None = None) -> None:
        if eot_samples < 1:
            raise AmsmoothError(f"eot_samples must be >= 1, got {eot_samples}")
        self.encoder, self.smoothing, self.eot_samples = encoder, smoothing, eot_samples
        self.max_batch = max_batch
        self.layout = layout or Layout("prepend" if prepend else "append")
        self.evaluation: Draw = None
        self.noise_generator = torch.Generator().manual_seed(0)   # the smoothing noise's own stream (run_case
        #                                                           seeds it per case from the case's seed)
        self.pool: CandidatePool | None = None                 # set when the attack re-ranks candidates

    @property
    def prepend(self) -> bool:
        return self.layout.mode == "prepend"

    def record(self, ids: Sequence[int], loss: float) -> None:
        """Offer a candidate to the re-ranking pool (no-op without one)."""
        if self.pool is not None:
            self.pool.offer(ids, loss)

    def fix_evaluation(self, generator: torch.Generator | None) -> None:
        """Draw the fixed evaluation set, if this objective uses one (the text objectives do not: no draw)."""

    def batch_losses(self, batch: TokenizedBatch, z: Draw, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of each candidate of ``batch`` (EOT mean): ``[B]``."""
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        return self.smoothing is not None

    @property
    def rows_per_candidate(self) -> int:
        """Encoder rows one candidate costs: 1 plain, m·n adaptive."""
        return self.eot_samples * self.smoothing.config.n if self.smoothing is not None else 1

    def draw(self, generator: torch.Generator | None) -> torch.Tensor | None:
        """Standard normal draws ``[m, n, L, D]`` shared by all candidates of one iteration (None when plain),
        from ``noise_generator`` (never from the attack's ``generator``, which this leaves untouched)."""
        return self.smoothing_draw()

    def rerank_draw(self) -> Draw:
        """A draw for re-ranking candidates under the defense (the evaluation draw's randomness, fresh smoothing
        noise); text objectives: just the smoothing noise."""
        return self.smoothing_draw()

    def smoothing_draw(self) -> torch.Tensor | None:
        """The smoothing noise ``[m, n, L, D]`` from the objective's own stream (None when plain)."""
        if self.smoothing is None:
            return None
        n, L, D = self.smoothing.config.n, self.encoder.max_length, self.encoder.hidden_size
        return gaussian_noise((self.eot_samples, n, L, D), self.noise_generator)

    def _noise(self, batch: TokenizedBatch, z: torch.Tensor) -> torch.Tensor:
        """G = z·σ for each candidate: ``[B·m·n, L, D]`` with σ ``[B, L]`` from the defense's relevance."""
        with torch.no_grad():
            sigma = self.smoothing.scores(batch).sigma.to(z.device)
        noise = z[None] * sigma[:, None, None, :, None]
        return noise.flatten(0, 2)

    def conditioning(self, batch: TokenizedBatch, z: torch.Tensor | None,
                     offset: torch.Tensor | None = None) -> torch.Tensor:
        """Per candidate and EOT draw, the conditioning the attacked model sees: ``[B, m, L, D]`` (m = 1 plain).

        ``offset`` ``[L, D]`` is added to every candidate's token embeddings (gradients flow to it).
        """
        B, L, D = len(batch), self.encoder.max_length, self.encoder.hidden_size
        if self.smoothing is None or z is None or self.smoothing.config.sigma0 == 0:
            # plain, or AMS at σ0 = 0, which returns T(y) itself (AdaptiveMedianSmoothing.smooth)
            noise = None if offset is None else offset.expand(B, L, D)
            h = self.encoder.encode_ids(batch.input_ids, batch.attention_mask, noise)[:, None]
            return h if z is None else h.expand(B, z.shape[0], L, D)
        m, n = z.shape[0], z.shape[1]
        noise = self._noise(batch, z).to(self.encoder.device)
        if offset is not None:
            noise = noise + offset.to(noise.device)
        ids = batch.input_ids.repeat_interleave(m * n, dim=0)
        mask = batch.attention_mask.repeat_interleave(m * n, dim=0)
        h = self.encoder.encode_ids(ids, mask, noise.to(self.encoder.dtype)).reshape(B * m, n, L, D)
        return straight_through_median(h).reshape(B, m, L, D)

    def losses(self, prefix: TokenizedBatch, suffixes: Sequence[Sequence[int]],
               z: Draw) -> torch.Tensor:
        """Losses of many candidate suffixes without gradients, chunked to ``max_batch`` encoder rows: ``[P]``."""
        per_chunk = max(1, self.max_batch // self.rows_per_candidate)
        out = []
        with torch.no_grad():
            for s in range(0, len(suffixes), per_chunk):
                batch = candidate_batch(self.encoder, prefix, suffixes[s:s + per_chunk], layout=self.layout)
                out.append(self.batch_losses(batch, z).cpu())
        return torch.cat(out)

    def text_losses(self, texts: Sequence[str], z: Draw) -> torch.Tensor:
        """Losses of prompts given as text (tokenized as the pipeline does), chunked, no gradients: ``[P]``."""
        per_chunk = max(1, self.max_batch // self.rows_per_candidate)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), per_chunk):
                out.append(self.batch_losses(self.encoder.tokenize(list(texts[s:s + per_chunk])), z).cpu())
        return torch.cat(out)

    def loss_and_grad(self, prefix: TokenizedBatch, suffix: Sequence[int],
                      z: Draw) -> tuple[float, torch.Tensor]:
        """Loss of one candidate and its gradient w.r.t. the suffix tokens' embeddings: ``(loss, [K, D])``."""
        batch = candidate_batch(self.encoder, prefix, [suffix], layout=self.layout)
        L, D = self.encoder.max_length, self.encoder.hidden_size
        offset = torch.zeros(L, D, device=self.encoder.device, dtype=self.encoder.dtype, requires_grad=True)
        loss = self.batch_losses(batch, z, offset)[0]
        (grad,) = torch.autograd.grad(loss, offset)
        n_source = 0 if self.layout.mode == "replace" else len(prefix.content_ids[0])
        rows = [self.encoder.content_start + p for p in self.layout.positions(n_source, len(suffix))]
        return float(loss.detach()), grad[rows].float()

    def text_loss(self, text: str, z: Draw) -> float:
        """The objective of a prompt as the pipeline reads it (re-tokenized from text)."""
        with torch.no_grad():
            return float(self.batch_losses(self.encoder.tokenize([text]), z)[0])


class TextObjective(ConditioningObjective):
    """loss(conditioning of the candidate, target ``[L, D]``): the text-encoder attacks' objective."""

    def __init__(self, encoder: TextEncoder, target: torch.Tensor, loss: str = "mse",
                 smoothing: AdaptiveMedianSmoothing | None = None, eot_samples: int = 1,
                 max_batch: int = 256, prepend: bool = False, layout: Layout | None = None) -> None:
        if loss not in LOSSES:
            raise AmsmoothError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        super().__init__(encoder, smoothing, eot_samples, max_batch, prepend, layout)
        self.target, self.loss_fn = target.float(), LOSSES[loss]

    def batch_losses(self, batch: TokenizedBatch, z: torch.Tensor | None,
                     offset: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of each candidate of ``batch`` (EOT mean): ``[B]``."""
        h = self.conditioning(batch, z, offset)
        B, m = h.shape[:2]
        return self.loss_fn(h.flatten(0, 1), self.target.to(h.device)).reshape(B, m).mean(1)
