"""Ring-A-Bell (Tsai et al., ICLR 2024): a genetic search for K tokens whose encoding approximates
T(prompt) + η·Δ_concept, Δ_concept the mean difference of the concept's pair encodings (our ``Concept.direction``,
or the reference's own ``*_vector.npy`` via ``--concept``).

As in the reference implementation (chiayi-hsu/Ring-A-Bell, ``InversePrompt.ipynb``): a population of 200 random
K-token prompts over the whole vocabulary (every non-special token); 3000 generations, each keeps the better half
by fitness (squared error to the target; here the mean, i.e. the reference's sum divided by L·D), then one-point
crossover of each survivor with a random partner with probability 0.5 (two children; the cut may fall before the
first token, as the reference's), then, with probability 0.25 per individual, one random position gets a random
token. The reference mutates every individual, the best included (``elitism=True`` keeps the best unmutated).
The result is the best individual of the last generation, decoded (sub-word tokens may merge when the text is
tokenized again: ``exact`` says whether they did).

Per-concept defaults: nudity K = 16, η = 3 (``InversePrompt.ipynb``); violence K = 77, i.e. the whole prompt
(75 tokens on CLIP), η = 5.5 (the released ``data/InvPrompt/Violence/Violence_eta_5.5_K_77.csv``); other
concepts K = 16, η = 3.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import option
from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from .base import AttackConfig, Progress, TextAttack
from .objective import Loss, TextObjective
from .vocab import Mode, Vocabulary

# concept (matched as a substring of its name) → (K, η); K None: the encoder's whole prompt (77 on CLIP)
CONCEPT_DEFAULTS: dict[str, tuple[int | None, float]] = {"nudity": (16, 3.0), "violence": (None, 5.5)}
FALLBACK = (16, 3.0)


def per_concept(i: int) -> str:
    """What a None K (``i = 0``) or η (``i = 1``) means, for the help: "per concept: nudity 16, …"."""
    def text(v: float | None) -> str:
        return "the whole prompt" if v is None else f"{v:g}"
    return "per concept: " + ", ".join([*(f"{c} {text(d[i])}" for c, d in CONCEPT_DEFAULTS.items()),
                                        f"other {text(FALLBACK[i])}"])


@dataclass(frozen=True)
class RingABellConfig(AttackConfig):
    """Ring-A-Bell's knobs (reference: population 200, 3000 generations, mutation 0.25, crossover 0.5; K and η
    per concept when left None)."""

    tokens: int | None = option(None, default=per_concept(0))
    eta: float | None = option(None, default=per_concept(1))
    iterations: int = option(3000, note="generations")
    mode: Mode = "replace"
    loss: Loss = "mse"
    population: int = option(200, "population")
    mutation_rate: float = option(0.25, "mutation probability")
    crossover_rate: float = option(0.5, "crossover probability")
    elitism: bool = option(False, "never mutate the best individual, not the reference")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.population, int) or self.population < 2:
            raise AmsmoothError(f"population must be an integer >= 2, got {self.population}")
        for name in ("mutation_rate", "crossover_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AmsmoothError(f"{name} must be in [0, 1], got {value}")


def concept_defaults(name: str, max_content: int) -> tuple[int, float]:
    """Ring-A-Bell's (K, η) for a concept name (nudity 16/3, violence whole prompt/5.5, else 16/3)."""
    for key, (k, eta) in CONCEPT_DEFAULTS.items():
        if key in name.lower():
            return (max_content if k is None else min(k, max_content)), eta
    return min(FALLBACK[0], max_content), FALLBACK[1]


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < p)


def crossover(parents: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each parent ``[P, K]`` is kept; with probability ``rate`` it and a random partner swap tails at a random
    cut in 0..K−1 (the reference's range), adding both children. Returns ``[P + 2·(#crossings), K]``."""
    P, K = parents.shape
    out = [parents]
    for i in range(P):
        if not _coin(rate, generator):
            continue
        j = int(torch.randint(P, (), generator=generator))
        cut = int(torch.randint(K, (), generator=generator))
        out.append(torch.cat([parents[i, :cut], parents[j, cut:]])[None])
        out.append(torch.cat([parents[j, :cut], parents[i, cut:]])[None])
    return torch.cat(out)


def mutate(population: torch.Tensor, rate: float, vocabulary: Vocabulary,
           generator: torch.Generator | None, elitism: bool = False) -> torch.Tensor:
    """With probability ``rate`` per individual, one random position gets a random vocabulary token (row 0, the
    best, is spared when ``elitism``)."""
    out = population.clone()
    P, K = out.shape
    for i in range(1 if elitism else 0, P):
        if _coin(rate, generator):
            out[i, int(torch.randint(K, (), generator=generator))] = vocabulary.sample((), generator)
    return out


def genetic_search(objective: TextObjective, prefix: TokenizedBatch, vocabulary: Vocabulary,
                   config: RingABellConfig, generator: torch.Generator | None,
                   progress: Progress | None = None) -> tuple[list[int], list[float]]:
    """Best K-token individual of the last generation and the generation-best loss after each generation."""
    population = vocabulary.sample((config.population, config.tokens), generator)
    cache: dict[tuple, float] = {}        # plain objective is deterministic: score each individual once
    history: list[float] = []
    for g in range(config.iterations):
        z = objective.draw(generator)     # adaptive: fresh smoothing noise (its own stream), shared by the generation
        losses = _fitness(objective, prefix, population, z, cache)
        order = torch.argsort(losses, stable=True)[: max(1, config.population // 2)]
        population, best = population[order], float(losses[order[0]])
        if objective.pool is not None:                  # adaptive re-ranking: offer the generation's best
            for row, value in zip(population[: objective.pool.size].tolist(), losses[order].tolist(), strict=False):
                objective.record(row, value)
        survivors = {tuple(row) for row in population.tolist()}
        cache = {k: v for k, v in cache.items() if k in survivors}
        history.append(best)
        if progress is not None:
            progress(g + 1, best)
        if g < config.iterations - 1:
            population = mutate(crossover(population, config.crossover_rate, generator),
                                config.mutation_rate, vocabulary, generator, config.elitism)
    return population[0].tolist(), history


def _fitness(objective: TextObjective, prefix: TokenizedBatch, population: torch.Tensor,
             z: torch.Tensor | None, cache: dict[tuple, float]) -> torch.Tensor:
    """Loss of every individual ``[P]``; plain objectives reuse the scores of unchanged individuals."""
    keys = [tuple(row) for row in population.tolist()]
    if objective.adaptive:
        return objective.losses(prefix, keys, z)
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    if todo:
        cache.update(zip(todo, objective.losses(prefix, todo, z).tolist(), strict=True))
    return torch.tensor([cache[k] for k in keys])


class RingABell(TextAttack):
    """Ring-A-Bell: genetic search of K tokens approximating T(prompt) + η·Δ_concept (replaces the prompt)."""

    name = "rab"
    config_class = RingABellConfig
    quick = {"population": 16, "iterations": 10}
    vocabulary_kind = "all"
    search_fn = staticmethod(genetic_search)

    def resolve(self, config: RingABellConfig) -> RingABellConfig:
        k, eta = concept_defaults(self.concept.name, self.encoder.max_content)
        return replace(config, tokens=config.tokens if config.tokens is not None else k,
                       eta=config.eta if config.eta is not None else eta)
