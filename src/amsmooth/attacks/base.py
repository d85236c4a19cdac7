"""What every attack shares: its settings, its result, and the text-encoder attack skeleton.

A text-encoder attack searches ``budget`` (K) real vocabulary tokens. ``mode="replace"``: the adversarial prompt
is those K tokens alone (Ring-A-Bell); ``mode="append"``: the source prompt followed by K tokens (QF-Attack),
the prompt cut to fit the encoder's length. The target embedding is h* = T(base) + η·Δ_concept, with base the
source prompt (or ``target_prompt``). Each ``run`` takes its own ``torch.Generator``: same seed, same prompt.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..concepts import Concept
from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..smoothing import AdaptiveMedianSmoothing
from .objective import LOSSES, TextObjective, concept_target
from .vocab import Vocabulary

Progress = Callable[[int, float], None]   # (iteration, best loss so far) after each iteration
MODES = ("replace", "append")


@dataclass(frozen=True)
class AttackConfig:
    """Settings shared by the text-encoder attacks (each attack sets its own defaults)."""

    budget: int = 16                  # K: number of searched tokens
    iterations: int = 100             # generations (Ring-A-Bell) or gradient steps (QF-PGD)
    mode: str = "replace"             # replace the prompt by the K tokens, or append them to it
    loss: str = "mse"                 # distance to the target embedding: mse or cosine
    eta: float = 3.0                  # η: weight of the concept direction in the target
    target_prompt: str | None = None  # encode this instead of the source prompt for the target's base
    eot_samples: int = 1              # adaptive only: m draws of the n smoothing samples per evaluation

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or self.budget < 1:
            raise AmsmoothError(f"budget (number of adversarial tokens) must be an integer >= 1, got {self.budget}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise AmsmoothError(f"iterations must be an integer >= 1, got {self.iterations}")
        if self.mode not in MODES:
            raise AmsmoothError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.loss not in LOSSES:
            raise AmsmoothError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if not math.isfinite(self.eta):
            raise AmsmoothError(f"eta must be a finite number, got {self.eta}")
        if not isinstance(self.eot_samples, int) or self.eot_samples < 1:
            raise AmsmoothError(f"eot_samples must be an integer >= 1, got {self.eot_samples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AttackResult:
    """One adversarial prompt: its text, the searched token ids and the objective along the search."""

    prompt: str
    source_prompt: str
    tokens: list[int]                 # the K searched token ids
    loss: float                       # objective of ``prompt`` re-tokenized from text (fresh noise if adaptive)
    history: list[float] = field(default_factory=list)   # best loss after each iteration
    exact: bool = True                # ``prompt`` re-tokenizes to exactly the optimized ids


class TextAttack:
    """Skeleton of an attack on the text encoder: target, vocabulary, objective; subclasses implement ``search``."""

    name = "text"
    config_class = AttackConfig

    def __init__(self, encoder: TextEncoder, concept: Concept, config: AttackConfig | None = None,
                 smoothing: AdaptiveMedianSmoothing | None = None, vocabulary: Vocabulary | None = None) -> None:
        concept.check_encoder(encoder)
        if smoothing is not None and smoothing.encoder is not encoder:
            raise AmsmoothError("the smoothing defense must wrap the attacked encoder")
        self.encoder, self.concept, self.smoothing = encoder, concept, smoothing
        self.config = config or self.config_class()
        if self.config.budget > encoder.max_content:
            raise AmsmoothError(f"budget {self.config.budget} exceeds the {encoder.max_content} prompt tokens "
                                f"the encoder reads")
        self.vocabulary = vocabulary or Vocabulary(encoder)

    @property
    def adaptive(self) -> bool:
        return self.smoothing is not None

    def prefix(self, prompt: str) -> tuple[TokenizedBatch, str]:
        """The kept part of the prompt (nothing in replace mode; cut to leave K tokens in append mode)."""
        if self.config.mode == "replace":
            return self.encoder.tokenize([""]), ""
        room = self.encoder.max_content - self.config.budget
        ids = self.encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        text, batch = prompt, (self.encoder.tokenize([prompt]) if len(ids) <= room else None)
        while batch is None or len(batch.content_ids[0]) > room:   # decoded text can re-tokenize longer
            ids = ids[:room] if len(ids) > room else ids[:-1]
            text = self.encoder.tokenizer.decode(ids)
            batch = self.encoder.tokenize([text])
        return batch, text

    def objective(self, prompt: str) -> TextObjective:
        base = self.config.target_prompt if self.config.target_prompt is not None else prompt
        target = concept_target(self.encoder, base, self.concept.direction, self.config.eta)
        return TextObjective(self.encoder, target, self.config.loss, self.smoothing, self.config.eot_samples)

    def search(self, objective: TextObjective, prefix: TokenizedBatch, generator: torch.Generator | None,
               progress: Progress | None) -> tuple[list[int], list[float]]:
        """Best suffix token ids found and the best loss after each iteration."""
        raise NotImplementedError

    def run(self, prompt: str, generator: torch.Generator | None = None,
            progress: Progress | None = None) -> AttackResult:
        """Attack one prompt: search, then score the resulting text as the pipeline will read it."""
        objective = self.objective(prompt)
        prefix, kept = self.prefix(prompt)
        tokens, history = self.search(objective, prefix, generator, progress)
        suffix = self.encoder.tokenizer.decode(tokens)
        text = f"{kept} {suffix}" if kept.strip() else suffix
        exact = self.encoder.tokenize([text]).content_ids[0] == prefix.content_ids[0] + list(tokens)
        loss = objective.text_loss(text, objective.draw(generator))
        return AttackResult(text, prompt, list(tokens), loss, history, exact)
