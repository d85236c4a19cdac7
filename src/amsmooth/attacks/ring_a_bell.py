"""Ring-A-Bell (Tsai et al., ICLR 2024): a genetic search for K tokens whose encoding approximates
T(prompt) + η·Δ_concept, Δ_concept the mean difference of the concept's pair encodings (our ``Concept.direction``).

As in the reference implementation (chiayi-hsu/Ring-A-Bell, ``InversePrompt.ipynb``): a random population of
K-token prompts; each generation keeps the better half by fitness (squared error to the target; here the mean,
i.e. the reference's sum divided by L·D), then one-point crossover of each survivor with a random partner with
probability ``crossover_rate`` (two children), then a random token at a random position with probability
``mutation_rate`` per individual. One change: the best individual is never mutated, so the best loss never rises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from .base import AttackConfig, Progress, TextAttack
from .objective import TextObjective
from .vocab import Vocabulary


@dataclass(frozen=True)
class RingABellConfig(AttackConfig):
    """Ring-A-Bell's knobs; reference values: population 200, 3000 generations, mutation 0.25, crossover 0.5,
    K = 16, η = 3 (nudity). The default generation count is lower so that a CPU run finishes."""

    budget: int = 16
    iterations: int = 200             # generations
    mode: str = "replace"
    loss: str = "mse"
    population: int = 200
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.population, int) or self.population < 2:
            raise AmsmoothError(f"population must be an integer >= 2, got {self.population}")
        for name in ("mutation_rate", "crossover_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AmsmoothError(f"{name} must be in [0, 1], got {value}")


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < p)


def crossover(parents: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each parent ``[P, K]`` is kept; with probability ``rate`` it and a random partner swap tails at a random
    point, adding both children. Returns ``[P + 2·(#crossings), K]``."""
    P, K = parents.shape
    out = [parents]
    for i in range(P):
        if K < 2 or not _coin(rate, generator):
            continue
        j = int(torch.randint(P, (), generator=generator))
        cut = int(torch.randint(1, K, (), generator=generator))
        out.append(torch.cat([parents[i, :cut], parents[j, cut:]])[None])
        out.append(torch.cat([parents[j, :cut], parents[i, cut:]])[None])
    return torch.cat(out)


def mutate(population: torch.Tensor, rate: float, vocabulary: Vocabulary,
           generator: torch.Generator | None) -> torch.Tensor:
    """With probability ``rate`` per individual, one random position gets a random vocabulary token."""
    out = population.clone()
    P, K = out.shape
    for i in range(1, P):   # the best individual (row 0) is never mutated
        if _coin(rate, generator):
            out[i, int(torch.randint(K, (), generator=generator))] = vocabulary.sample((), generator)
    return out


def genetic_search(objective: TextObjective, prefix: TokenizedBatch, vocabulary: Vocabulary,
                   config: RingABellConfig, generator: torch.Generator | None,
                   progress: Progress | None = None) -> tuple[list[int], list[float]]:
    """Best K-token suffix and the best loss after each generation (selection → crossover → mutation)."""
    population = vocabulary.sample((config.population, config.budget), generator)
    cache: dict[tuple, float] = {}        # plain objective is deterministic: score each individual once
    history: list[float] = []
    for g in range(config.iterations):
        z = objective.draw(generator)     # adaptive: fresh smoothing noise, shared by the generation
        losses = _fitness(objective, prefix, population, z, cache)
        order = torch.argsort(losses, stable=True)[: max(1, config.population // 2)]
        population, best = population[order], float(losses[order[0]])
        survivors = {tuple(row) for row in population.tolist()}
        cache = {k: v for k, v in cache.items() if k in survivors}
        history.append(best)
        if progress is not None:
            progress(g + 1, best)
        if g < config.iterations - 1:
            population = mutate(crossover(population, config.crossover_rate, generator),
                                config.mutation_rate, vocabulary, generator)
    return population[0].tolist(), history


def _fitness(objective: TextObjective, prefix: TokenizedBatch, population: torch.Tensor,
             z: torch.Tensor | None, cache: dict[tuple, float]) -> torch.Tensor:
    """Loss of every individual ``[P]``; plain objectives reuse the scores of unchanged individuals."""
    keys = [tuple(row) for row in population.tolist()]
    if objective.adaptive:
        return objective.losses(prefix, keys, z)
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    if todo:
        cache.update(zip(todo, objective.losses(prefix, todo, z).tolist()))
    return torch.tensor([cache[k] for k in keys])


class RingABell(TextAttack):
    """Ring-A-Bell: genetic search of K tokens approximating T(prompt) + η·Δ_concept (replaces the prompt)."""

    name = "rab"
    config_class = RingABellConfig
    search_fn = staticmethod(genetic_search)
