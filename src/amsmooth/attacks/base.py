"""What every attack shares: its settings, its result, and the token-attack skeleton.

An attack searches K real vocabulary tokens (``tokens``), placed by ``mode`` (:class:`~.vocab.Layout`):
``replace`` (the adversarial prompt is those K tokens alone: Ring-A-Bell, P4D-N, MMA-Diffusion), ``append``
(QF-Attack, concept-PGD), ``prepend`` (UnlearnDiffAtk) or ``interleave`` (P4D-K); the source prompt is cut to fit
the encoder's length. Each ``run`` takes its own ``torch.Generator``: same seed, same prompt.

Defaults are each attack's reference values (its paper and released code; the table in ``docs/attacks.md``).
``budget="quick"`` (``--budget quick``) swaps in the attack's :attr:`TextAttack.quick` settings, a labelled,
much cheaper setting for CPU smoke runs that is *not* the reference. Whatever the budget asked for,
:meth:`TextAttack.departures` lists every setting that differs from the reference, and every written prompt set
carries that list (``departs_from_reference``), so a set made with explicit flags is never taken for a reference one.

Adaptive attacks (``smoothing`` set) draw the smoothing noise from a stream of their own, seeded from the case's
generator seed (:func:`noise_generator`), so the search consumes exactly the draws of the plain attack.
``rerank`` > 0 re-scores the best candidates the search saw under the defended loss on ``rerank_draws`` fresh
smoothing draws and keeps the best one (a stronger selection for adaptive attacks).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..concepts import Concept
from ..config import option
from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..prompts import PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .objective import LOSSES, CandidatePool, ConditioningObjective, Loss, TextObjective, concept_target
from .vocab import MODES, Layout, Mode, Vocabulary

Progress = Callable[[int, float], None]   # (iteration, best loss so far) after each iteration
BUDGETS = ("reference", "quick")
ADAPTIVE_SETTINGS = ("eot_samples", "rerank", "rerank_draws")   # settings of adaptive attacks only
# Our own additions with no reference value (adaptive-attack options) and the budget label itself.
NOT_REFERENCE_SETTINGS = ("budget", *ADAPTIVE_SETTINGS)


@dataclass(frozen=True)
class SearchConfig:
    """Settings shared by every attack (each attack sets its own defaults).

    Fields declared with :func:`~amsmooth.config.option` are ``amsmooth attack`` flags (help text here, default in
    the attack's config); a flag applies to the attacks whose config has the field."""

    tokens: int | None = option(16, "adversarial tokens", metavar="K")       # K: number of searched tokens
    iterations: int = option(100, "search iterations", metavar="N")        # generations / gradient steps
    mode: Mode = option("replace", "where the tokens go")
    eot_samples: int = option(1, "draws of the n smoothing samples per evaluation", metavar="M")
    rerank: int = option(0, "re-rank the N best candidates under the defended loss on fresh draws, 0 off",
                         metavar="N")
    rerank_draws: int = option(8, "smoothing draws per re-ranked candidate", metavar="R")
    budget: str = "reference"         # reference (the paper's settings) or quick (labelled CPU setting)

    def __post_init__(self) -> None:
        for name in ("tokens", "iterations", "eot_samples", "rerank_draws"):
            value = getattr(self, name)
            if name == "tokens" and value is None:      # resolved by the attack (Ring-A-Bell: per concept)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                what = " (number of adversarial tokens)" if name == "tokens" else ""
                raise AmsmoothError(f"{name}{what} must be an integer >= 1, got {value}")
        if not isinstance(self.rerank, int) or self.rerank < 0:
            raise AmsmoothError(f"rerank must be an integer >= 0, got {self.rerank}")
        if self.mode not in MODES:
            raise AmsmoothError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.budget not in BUDGETS:
            raise AmsmoothError(f"unknown budget {self.budget!r}; known: {', '.join(BUDGETS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackConfig(SearchConfig):
    """Settings shared by the concept-targeted text attacks: the target embedding and the distance to it."""

    loss: Loss = option("mse", "distance to the target")
    eta: float | None = option(3.0, "η, target = T(prompt) + η·Δ_concept")
    target_prompt: str | None = option(None, "use T(this prompt) + η·Δ as the target",
                                       default="the prompt itself")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise AmsmoothError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.eta is not None and not math.isfinite(self.eta):
            raise AmsmoothError(f"eta must be a finite number, got {self.eta}")


@dataclass
class AttackResult:
    """One adversarial prompt: its text, the searched token ids and the objective along the search."""

    prompt: str
    source_prompt: str
    tokens: list[int]                 # the K searched token ids
    loss: float                       # objective of ``prompt`` re-tokenized from text (fresh noise if adaptive)
    history: list[float] = field(default_factory=list)   # best (or current) loss after each iteration
    exact: bool = True                # ``prompt`` re-tokenizes to exactly the optimized ids
    info: dict[str, Any] = field(default_factory=dict)   # attack-specific facts (e.g. an early stop)


def noise_generator(generator: torch.Generator | None) -> torch.Generator:
    """The smoothing noise's own stream, seeded from ``generator``'s seed (not drawn from it)."""
    seed = 0 if generator is None else generator.initial_seed()
    digest = hashlib.sha256(f"amsmooth-smoothing-noise:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


class TextAttack:
    """Skeleton of a token attack: vocabulary, objective, search; subclasses set ``search_fn`` (and
    ``case_objective`` for another loss than the text-encoder one)."""

    name = "text"
    config_class: ClassVar[type] = AttackConfig
    quick: ClassVar[dict[str, Any]] = {}          # the labelled cheap CPU setting (``--budget quick``)
    vocabulary_kind: ClassVar[str] = "words"
    variant_fields: ClassVar[tuple[str, ...]] = ()    # settings that pick a reference variant (QF's search, P4D-K)
    projection: ClassVar[str] = "l2"

    def __init__(self, encoder: TextEncoder, concept: Concept, config: SearchConfig | None = None,
                 smoothing: AdaptiveMedianSmoothing | None = None, vocabulary: Vocabulary | None = None) -> None:
        concept.check_encoder(encoder)
        if smoothing is not None and smoothing.encoder is not encoder:
            raise AmsmoothError("the smoothing defense must wrap the attacked encoder")
        self.encoder, self.concept, self.smoothing = encoder, concept, smoothing
        self.config = self.resolve(config or self.config_class())
        if smoothing is None and self.config.rerank:
            raise AmsmoothError("rerank re-scores candidates under the defense: it needs an adaptive attack")
        if self.config.mode != "interleave" and self.config.tokens > encoder.max_content:
            raise AmsmoothError(f"tokens {self.config.tokens} exceeds the {encoder.max_content} prompt tokens "
                                f"the encoder reads")
        self.layout = Layout(self.config.mode, getattr(self.config, "every_k", 3))
        self.vocabulary = vocabulary or Vocabulary(encoder, kind=self.vocabulary_kind)

    @classmethod
    def make_config(cls, budget: str = "reference", **changes: Any) -> SearchConfig:
        """The attack's config: reference defaults, the quick setting if ``budget == "quick"``, then ``changes``."""
        base = dict(cls.quick) if budget == "quick" else {}
        names = {f.name for f in fields(cls.config_class)}
        unknown = set(changes) - names
        if unknown:
            raise AmsmoothError(f"'{cls.name}' has no setting {', '.join(sorted(unknown))}")
        return cls.config_class(**{**base, **changes, "budget": budget})

    def resolve(self, config: SearchConfig) -> SearchConfig:
        """Fill defaults that depend on the encoder or concept (Ring-A-Bell's per-concept K and η)."""
        return config

    def departures(self) -> dict[str, dict[str, Any]]:
        """Settings of this run that differ from the reference's, as ``{name: {"value", "reference"}}``.

        The reference is the class defaults for the same variant (``variant_fields``), resolved for this encoder
        and concept; settings the reference leaves to the context (None: the U-Net attacks' image size, a target
        prompt) and our adaptive-only options are not compared. Empty: the reference settings."""
        ref = asdict(self.resolve(self.config_class(**{f: getattr(self.config, f) for f in self.variant_fields})))
        ours = asdict(self.config)
        return {k: {"value": v, "reference": ref[k]} for k, v in ours.items()
                if k not in NOT_REFERENCE_SETTINGS and ref.get(k) is not None and v != ref[k]}

    @property
    def adaptive(self) -> bool:
        return self.smoothing is not None

    def prefix(self, prompt: str) -> tuple[TokenizedBatch, str]:
        """The kept part of the prompt (nothing in replace mode; cut to leave room for the searched tokens)."""
        if self.config.mode == "replace":
            return self.encoder.tokenize([""]), ""
        ids = self.encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.encoder.max_content

        def fits(n: int) -> bool:
            return self.layout.total(n, self.config.tokens) <= room

        text, batch = prompt, (self.encoder.tokenize([prompt]) if fits(len(ids)) else None)
        while batch is None or not fits(len(batch.content_ids[0])):   # decoded text can re-tokenize longer
            ids = ids[:-1]
            while ids and not fits(len(ids)):
                ids = ids[:-1]
            text = self.encoder.tokenizer.decode(ids)
            batch = self.encoder.tokenize([text])
        return batch, text

    @property
    def prepend(self) -> bool:
        return self.config.mode == "prepend"

    def objective(self, prompt: str) -> ConditioningObjective:
        base = self.config.target_prompt if self.config.target_prompt is not None else prompt
        target = concept_target(self.encoder, base, self.concept.direction, self.config.eta)
        return TextObjective(self.encoder, target, self.config.loss, self.smoothing, self.config.eot_samples,
                             layout=self.layout)

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
        """Best searched token ids found and the loss history (the class's ``search_fn``)."""
        if self.search_fn is None:
            raise NotImplementedError(f"{type(self).__name__} sets no search_fn")
        return self.search_fn(objective, prefix, self.vocabulary, self.config, generator, progress)

    def run(self, prompt: str, generator: torch.Generator | None = None,
            progress: Progress | None = None) -> AttackResult:
        """Attack one prompt: search, then score the resulting text as the pipeline will read it."""
        return self.run_case(PromptCase("0", prompt), generator, progress)

    def compose_text(self, prefix: TokenizedBatch, kept: str, tokens: list[int]) -> tuple[str, list[int]]:
        """The adversarial prompt's text and the content ids it was optimized as."""
        kept_ids = [] if self.config.mode == "replace" else list(prefix.content_ids[0])
        expected = self.layout.compose(kept_ids, tokens)
        if self.config.mode == "interleave" or not kept.strip():
            return self.encoder.tokenizer.decode(expected), expected
        adv = self.encoder.tokenizer.decode(tokens)
        return (f"{adv} {kept}" if self.prepend else f"{kept} {adv}"), expected

    def run_case(self, case: PromptCase, generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> AttackResult:
        """Attack one case of a prompt set (its prompt; U-Net attacks also use its number and seed)."""
        objective = self.case_objective(case)
        objective.noise_generator = noise_generator(generator)
        if self.config.rerank:
            objective.pool = CandidatePool(self.config.rerank)
        objective.fix_evaluation(generator)
        prefix, kept = self.prefix(case.prompt)
        tokens, history = self.search(objective, prefix, generator, progress)
        info: dict[str, Any] = getattr(objective, "info", {})
        if self.config.rerank and objective.pool is not None and objective.pool.best:
            tokens, info = self.rerank(objective, prefix, list(tokens), info)
        text, expected = self.compose_text(prefix, kept, list(tokens))
        exact = self.encoder.tokenize([text]).content_ids[0] == expected
        draw = objective.evaluation if objective.evaluation is not None else objective.draw(generator)
        loss = objective.text_loss(text, draw)
        return AttackResult(text, case.prompt, list(tokens), loss, history, exact, info)

    def rerank(self, objective: ConditioningObjective, prefix: TokenizedBatch, tokens: list[int],
               info: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """The candidate (pool ∪ the search's pick) with the lowest defended loss averaged over
        ``rerank_draws`` fresh smoothing draws (the same draws for every candidate)."""
        cands = list(dict.fromkeys([tuple(tokens), *objective.pool.top()]))
        draws = [objective.rerank_draw() for _ in range(self.config.rerank_draws)]
        scores = torch.stack([objective.losses(prefix, [list(c) for c in cands], d) for d in draws]).mean(0)
        best = int(scores.argmin())
        return list(cands[best]), {**info, "reranked": len(cands), "rerank_loss": float(scores[best]),
                                   "rerank_changed": best != 0}
