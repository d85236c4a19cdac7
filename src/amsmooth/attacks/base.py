"""What every attack shares: its settings, its result, and the text-encoder attack skeleton.

An attack searches ``budget`` (K) real vocabulary tokens. ``mode="replace"``: the adversarial prompt is those K
tokens alone (Ring-A-Bell, P4D-N); ``mode="append"``: the source prompt followed by K tokens (QF-Attack);
``mode="prepend"``: K tokens followed by the source prompt (UnlearnDiffAtk); the prompt is cut to fit the
encoder's length. The text attacks' target embedding is h* = T(base) + η·Δ_concept, with base the source prompt
(or ``target_prompt``). Each ``run`` takes its own ``torch.Generator``: same seed, same prompt. The U-Net attacks
(:mod:`amsmooth.attacks.unet`) reuse this skeleton with another objective.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..concepts import Concept
from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..prompts import PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .objective import LOSSES, ConditioningObjective, TextObjective, concept_target
from .vocab import Vocabulary

Progress = Callable[[int, float], None]   # (iteration, best loss so far) after each iteration
MODES = ("replace", "append", "prepend")


@dataclass(frozen=True)
class SearchConfig:
    """Settings shared by every attack (each attack sets its own defaults)."""

    budget: int = 16                  # K: number of searched tokens
    iterations: int = 100             # generations (Ring-A-Bell) or gradient steps (QF-PGD, UDA, P4D)
    mode: str = "replace"             # replace the prompt by the K tokens, append or prepend them to it
    eot_samples: int = 1              # adaptive only: m draws of the n smoothing samples per evaluation

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or self.budget < 1:
            raise AmsmoothError(f"budget (number of adversarial tokens) must be an integer >= 1, got {self.budget}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise AmsmoothError(f"iterations must be an integer >= 1, got {self.iterations}")
        if self.mode not in MODES:
            raise AmsmoothError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if not isinstance(self.eot_samples, int) or self.eot_samples < 1:
            raise AmsmoothError(f"eot_samples must be an integer >= 1, got {self.eot_samples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackConfig(SearchConfig):
    """Settings shared by the text-encoder attacks: the target embedding and the distance to it."""

    loss: str = "mse"                 # distance to the target embedding: mse or cosine
    eta: float = 3.0                  # η: weight of the concept direction in the target
    target_prompt: str | None = None  # encode this instead of the source prompt for the target's base

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise AmsmoothError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if not math.isfinite(self.eta):
            raise AmsmoothError(f"eta must be a finite number, got {self.eta}")


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
    """Skeleton of a token attack: vocabulary, objective, search; subclasses implement ``search`` (and
    ``objective`` for another loss than the text-encoder one)."""

    name = "text"
    config_class = AttackConfig

    def __init__(self, encoder: TextEncoder, concept: Concept, config: SearchConfig | None = None,
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
        """The kept part of the prompt (nothing in replace mode; cut to leave K tokens in append/prepend mode)."""
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

    @property
    def prepend(self) -> bool:
        return self.config.mode == "prepend"

    def objective(self, prompt: str) -> TextObjective:
        base = self.config.target_prompt if self.config.target_prompt is not None else prompt
        target = concept_target(self.encoder, base, self.concept.direction, self.config.eta)
        return TextObjective(self.encoder, target, self.config.loss, self.smoothing, self.config.eot_samples,
                             prepend=self.prepend)

    def case_objective(self, case: PromptCase) -> ConditioningObjective:
        """The objective of one case of a prompt set (the text attacks need only its prompt)."""
        return self.objective(case.prompt)

    def settings(self) -> dict[str, Any]:
        """What, besides the config, encoder, concept and defense, determines the rows (the U-Net attacks' models)."""
        return {}

    # The attack's search: (objective, prefix, vocabulary, config, generator, progress) → (best ids, history).
    search_fn: Callable[..., tuple[list[int], list[float]]] | None = None

    def search(self, objective: ConditioningObjective, prefix: TokenizedBatch, generator: torch.Generator | None,
               progress: Progress | None) -> tuple[list[int], list[float]]:
        """Best suffix token ids found and the best loss after each iteration (the class's ``search_fn``)."""
        if self.search_fn is None:
            raise NotImplementedError(f"{type(self).__name__} sets no search_fn")
        return self.search_fn(objective, prefix, self.vocabulary, self.config, generator, progress)

    def run(self, prompt: str, generator: torch.Generator | None = None,
            progress: Progress | None = None) -> AttackResult:
        """Attack one prompt: search, then score the resulting text as the pipeline will read it."""
        return self.run_case(PromptCase("0", prompt), generator, progress)

    def run_case(self, case: PromptCase, generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> AttackResult:
        """Attack one case of a prompt set (its prompt; U-Net attacks also use its number and seed)."""
        objective = self.case_objective(case)
        objective.fix_evaluation(generator)
        prefix, kept = self.prefix(case.prompt)
        tokens, history = self.search(objective, prefix, generator, progress)
        adv = self.encoder.tokenizer.decode(tokens)
        if not kept.strip():
            text = adv
        else:
            text = f"{adv} {kept}" if self.prepend else f"{kept} {adv}"
        kept_ids = list(prefix.content_ids[0])
        expected = list(tokens) + kept_ids if self.prepend else kept_ids + list(tokens)
        exact = self.encoder.tokenize([text]).content_ids[0] == expected
        draw = objective.evaluation if objective.evaluation is not None else objective.draw(generator)
        loss = objective.text_loss(text, draw)
        return AttackResult(text, case.prompt, list(tokens), loss, history, exact)
