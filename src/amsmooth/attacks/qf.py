"""QF-Attack (Zhuang et al., CVPR-W 2023, "A Pilot Study of Query-Free Adversarial Attack against Stable
Diffusion"), as published in OPTML-Group/QF-Attack (``utils.py``).

A five-character suffix from the reference's character table (27 punctuation marks, A–Z, 0–9) is appended to the
prompt after one space, chosen to push the text embedding *away* from the clean prompt's: minimize
cos(T(prompt ⊕ suffix), T(prompt)) over the flattened ``[L, D]`` (untargeted), or over the *key dimensions* of a
phrase only (targeted / masked: ``mask = object_key(...)``: the dimensions where deleting the phrase from a set of
sentences moves the embedding with the same sign in more than ``mask_threshold`` of them).

Three searches, as in the reference:

- ``pgd`` (QF-PGD, the default): a logit table u ``[K, C]`` (uniform start); each of ``iterations`` (100) steps
  draws ``samples`` (100) hard Gumbel-softmax samples (τ = 0.5), each character its own token (the reference's
  ``craft_candidate_embed``), keeps the ``top_n`` (5) with the lowest similarity, and moves u by a signed gradient
  step of size ``eta_u / sqrt(iterations)`` (0.1) through the straight-through Gumbel-softmax; the result is the
  best sample seen. The reference back-propagates only the last of the top-n losses; here their mean. The
  suffix is written as the reference writes it: the characters joined without spaces (``char_sep``), which CLIP
  may tokenize differently from the optimized one-token-per-character input (``exact`` says so; the reported
  loss is that of the written text).
- ``greedy``: characters chosen one position at a time (each of the C characters tried), then one refinement pass.
- ``genetic``: 10 random suffixes, 50 generations of pairwise crossover + a shared mutation, keeping the best 20.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from ..config import option
from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..prompts import PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .base import AttackResult, Progress, SearchConfig, TextAttack, noise_generator
from .objective import ConditioningObjective
from .vocab import Mode

Search = Literal["pgd", "greedy", "genetic"]
Objective = Literal["untargeted", "targeted"]
SEARCHES: tuple[str, ...] = get_args(Search)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
DEFAULT_ITERATIONS = {"pgd": 100, "greedy": 1, "genetic": 50}   # steps / refinement passes / generations
PER_SEARCH = "per search: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_ITERATIONS.items())


def char_table() -> list[str]:
    """The reference's character table (``get_char_table``): 27 punctuation marks ('*' twice), A–Z, 0–9."""
    table = ['·', '~', '!', '@', '#', '$', '%', '^', '&', '*', '(', ')', '=', '-', '*', '+', '.', '<', '>', '?',
             ',', "'", ';', ':', '|', '\\', '/']
    return table + [chr(c) for c in range(ord('A'), ord('Z') + 1)] + [str(i) for i in range(10)]


@dataclass(frozen=True)
class QFConfig(SearchConfig):
    """QF-Attack's knobs (reference: 5 characters, PGD 100 steps × 100 samples, top 5, τ 0.5, η_u 1)."""

    tokens: int | None = option(5, note="characters")     # suffix length in characters
    iterations: int | None = option(None, default=PER_SEARCH)   # steps / refinement passes / generations
    mode: Mode = "append"
    search: Search = option("pgd", "search")
    objective: Objective = option("untargeted", "push the whole embedding away (untargeted) or only a phrase's "
                                  "key dimensions (targeted)", flag="qf-objective")
    mask_phrase: str | None = option(None, "the phrase to scrub, for the targeted objective")
    mask_sentences: tuple[str, ...] = option((), "a sentence containing the phrase, for the targeted objective "
                                             "(repeat: the key dimensions come from them)",
                                             flag="mask-sentence", metavar="TEXT")
    mask_threshold: int = option(9, "sign agreement threshold of the targeted objective")   # notebook: 9
    samples: int = option(100, "Gumbel samples per pgd step")
    top_n: int = option(5, "samples back-propagated per pgd step")
    tau: float = 0.5                  # pgd: Gumbel-softmax temperature
    eta_u: float = 1.0                # pgd: step size eta_u / sqrt(iterations)
    population: int = option(20, "survivors per generation of the genetic search")   # generateion_scale
    char_sep: str = ""                # how the suffix's characters are written (reference: joined)

    def __post_init__(self) -> None:
        if self.iterations is None:
            object.__setattr__(self, "iterations", DEFAULT_ITERATIONS.get(self.search, 100))
        super().__post_init__()
        if self.search not in SEARCHES:
            raise AmsmoothError(f"unknown QF search {self.search!r}; known: {', '.join(SEARCHES)}")
        if self.objective not in OBJECTIVES:
            raise AmsmoothError(f"unknown QF objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        if self.mode != "append":
            raise AmsmoothError("QF-Attack appends its suffix (mode append)")
        if self.objective == "targeted" and (not self.mask_phrase or len(self.mask_sentences) < 2):
            raise AmsmoothError("targeted QF-Attack needs --mask-phrase and at least two --mask-sentence "
                                "sentences containing it (the key dimensions come from them)")
        if self.objective == "targeted" and not 0 <= self.mask_threshold < len(self.mask_sentences):
            raise AmsmoothError(f"mask_threshold must be in [0, {len(self.mask_sentences) - 1}] for "
                                f"{len(self.mask_sentences)} sentences, got {self.mask_threshold}")
        for name in ("samples", "top_n", "population"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AmsmoothError(f"{name} must be an integer >= 1, got {getattr(self, name)}")
        if not (self.tau > 0 and self.eta_u > 0):
            raise AmsmoothError("tau and eta_u must be > 0")


def key_dimensions(encoder: TextEncoder, sentences: Sequence[str], phrase: str, threshold: int) -> torch.Tensor:
    """The reference's ``object_key``: 1 where sign(T(s without phrase) − T(s)) agrees in more than ``threshold``
    sentences, else 0: ``[L·D]``."""
    missing = [s for s in sentences if phrase not in s]
    if missing:
        raise AmsmoothError(f"mask sentence {missing[0]!r} does not contain the phrase {phrase!r}")
    with torch.no_grad():
        full = encoder.encode(list(sentences)).float()
        cut = encoder.encode([s.replace(phrase, "") for s in sentences]).float()
    votes = torch.sign(cut - full).sum(0).flatten()
    return (votes.abs() > threshold).float()


class QFObjective(ConditioningObjective):
    """cos(conditioning of the candidate, T(prompt)) over ``[L·D]`` (× the key-dimension mask): lower = further."""

    def __init__(self, encoder: TextEncoder, clean: torch.Tensor, mask: torch.Tensor | None,
                 smoothing: AdaptiveMedianSmoothing | None = None, eot_samples: int = 1) -> None:
        super().__init__(encoder, smoothing, eot_samples)
        self.clean = clean.float().flatten()
        self.mask = None if mask is None else mask.float()

    def batch_losses(self, batch: TokenizedBatch, z: Any, offset: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conditioning(batch, z, offset)                              # [B, m, L, D]
        B, m = h.shape[:2]
        flat, clean = h.float().reshape(B * m, -1), self.clean.to(h.device)
        if self.mask is not None:
            flat, clean = flat * self.mask.to(h.device), clean * self.mask.to(h.device)
        cos = torch.nn.functional.cosine_similarity(flat, clean[None], dim=1, eps=1e-6)
        return cos.reshape(B, m).mean(1)


class QFAttack(TextAttack):
    """QF-Attack: a K-character suffix pushing the embedding away from the clean prompt's (query-free)."""

    name = "qf"
    config_class = QFConfig
    quick = {"iterations": 8, "samples": 16, "top_n": 2}
    variant_fields = ("search", "objective", "mask_phrase", "mask_sentences", "mask_threshold")

    def __init__(self, encoder: TextEncoder, concept: Any, config: QFConfig | None = None,
                 smoothing: AdaptiveMedianSmoothing | None = None, vocabulary: Any = None) -> None:
        super().__init__(encoder, concept, config, smoothing, vocabulary=_NoVocabulary())
        self.chars = char_table()
        self.char_ids = self._single_token_chars()
        self.mask = None
        if self.config.objective == "targeted":
            self.mask = key_dimensions(encoder, self.config.mask_sentences, self.config.mask_phrase,
                                       self.config.mask_threshold)

    def _single_token_chars(self) -> dict[str, int]:
        """Characters that are one token on their own (the PGD search places each as its own token)."""
        tok, out = self.encoder.tokenizer, {}
        for c in dict.fromkeys(self.chars):
            ids = tok(c, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in tok.all_special_ids:
                out[c] = ids[0]
        if not out:
            raise AmsmoothError(f"{self.encoder.name}: no character of QF-Attack's table is a single token")
        return out

    def case_objective(self, case: PromptCase) -> QFObjective:
        return QFObjective(self.encoder, self.encoder.encode([case.prompt])[0], self.mask, self.smoothing,
                           self.config.eot_samples)

    def run_case(self, case: PromptCase, generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> AttackResult:
        objective = self.case_objective(case)
        objective.noise_generator = noise_generator(generator)
        prefix, kept = self.prefix(case.prompt)
        search = {"pgd": self._pgd, "greedy": self._greedy, "genetic": self._genetic}[self.config.search]
        suffix, history = search(objective, prefix, kept, generator, progress)
        text = f"{kept} {suffix}" if kept.strip() else suffix
        if self.config.search == "pgd":
            chosen = [self.char_ids[c] for c in suffix.split(self.config.char_sep)] if self.config.char_sep \
                else [self.char_ids[c] for c in suffix]
            exact = self.encoder.tokenize([text]).content_ids[0] == list(prefix.content_ids[0]) + chosen
        else:
            chosen, exact = self.encoder.tokenizer(suffix, add_special_tokens=False)["input_ids"], True
        loss = float(objective.text_losses([text], objective.draw(generator))[0])
        return AttackResult(text, case.prompt, list(chosen), loss, history, exact)

    # ------------------------------------------------------------------ searches
    def _texts(self, kept: str, suffixes: Sequence[str]) -> list[str]:
        return [f"{kept} {s}" if kept.strip() else s for s in suffixes]

    def _greedy(self, objective: QFObjective, prefix: TokenizedBatch, kept: str, generator: torch.Generator | None,
                progress: Progress | None) -> tuple[str, list[float]]:
        chars, K = list(dict.fromkeys(self.chars)), self.config.tokens
        suffix, history = "", []

        def best_at(current: list[str], pos: int) -> tuple[list[str], float]:
            z = objective.draw(generator)
            options = [current[:pos] + [c] + current[pos + 1:] for c in chars]
            losses = objective.text_losses(self._texts(kept, ["".join(o) for o in options]), z)
            i = int(losses.argmin())
            return options[i], float(losses[i])

        current: list[str] = []
        for pos in range(K):                                   # build the suffix one character at a time
            current, loss = best_at(current + [chars[0]], pos)
        for it in range(self.config.iterations):                # refinement passes, first position to last
            for pos in range(K):
                current, loss = best_at(current, pos)
            history.append(loss)
            if progress is not None:
                progress(it + 1, loss)
        suffix = "".join(current)
        return suffix, history

    def _genetic(self, objective: QFObjective, prefix: TokenizedBatch, kept: str,
                 generator: torch.Generator | None, progress: Progress | None) -> tuple[str, list[float]]:
        chars, K = self.chars, self.config.tokens
        if K < 2:
            raise AmsmoothError("the genetic QF search needs a suffix of at least 2 characters")

        def pick(n: int) -> int:
            return int(torch.randint(n, (), generator=generator))

        pool = ["".join(chars[i] for i in torch.randperm(len(chars), generator=generator)[:K].tolist())
                for _ in range(10)]
        scores: dict[str, float] = {}
        history = []
        for g in range(self.config.iterations):
            children = []
            for cand in pool:
                mate = pool[pick(len(pool))]
                cut = 1 + pick(K - 1)
                a, b = mate[:cut] + cand[cut:], cand[:cut] + mate[cut:]
                loc, c = pick(K), chars[pick(len(chars))]
                children += [a[:loc] + c + a[loc + 1:], b[:loc] + c + b[loc + 1:]]
            z = objective.draw(generator)
            todo = [c for c in dict.fromkeys(children) if objective.adaptive or c not in scores]
            if todo:
                scores.update(zip(todo, objective.text_losses(self._texts(kept, todo), z).tolist(), strict=True))
            pool = sorted(dict.fromkeys(children), key=lambda c: scores[c])[: self.config.population]
            best = min(scores.values())
            history.append(best)
            if progress is not None:
                progress(g + 1, best)
        return min(scores, key=scores.get), history

    def _pgd(self, objective: QFObjective, prefix: TokenizedBatch, kept: str, generator: torch.Generator | None,
             progress: Progress | None) -> tuple[str, list[float]]:
        cfg = self.config
        chars = list(self.char_ids)
        ids = torch.tensor([self.char_ids[c] for c in chars])
        table = self.encoder.embedding.weight.detach()[ids.to(self.encoder.device)].float()   # [C, D]
        K, C = cfg.tokens, len(chars)
        u = torch.full((K, C), 1.0 / C)
        lr = cfg.eta_u / math.sqrt(cfg.iterations)
        best, best_pick, history = math.inf, None, []
        for it in range(cfg.iterations):
            gumbel = -torch.log(-torch.log(torch.rand((cfg.samples, K, C), generator=generator).clamp(1e-20, 1)
                                           ).clamp_min(1e-20))
            picks = (u[None] + gumbel).argmax(-1)                                   # [S, K] hard samples
            z = objective.draw(generator)
            losses = objective.losses(prefix, ids[picks].tolist(), z)               # [S] cos, lower = further
            order = torch.argsort(losses, stable=True)[: cfg.top_n]
            if float(losses[order[0]]) < best:
                best, best_pick = float(losses[order[0]]), picks[order[0]].clone()
            grad = torch.zeros(K, C)
            for s in order.tolist():
                _, g_emb = objective.loss_and_grad(prefix, ids[picks[s]].tolist(), z)   # [K, D]
                g_onehot = g_emb.to(table.device) @ table.T                            # dL/dy: [K, C]
                u_var = u.clone().requires_grad_(True)
                soft = torch.softmax((u_var + gumbel[s]) / cfg.tau, dim=-1)
                (g_u,) = torch.autograd.grad((soft * g_onehot.cpu()).sum(), u_var)     # straight-through
                grad += g_u / len(order)
            u = u - lr * torch.sign(grad)                                             # signed descent on cos
            history.append(best)
            if progress is not None:
                progress(it + 1, best)
        return cfg.char_sep.join(chars[i] for i in best_pick.tolist()), history


class _NoVocabulary:
    """QF-Attack searches characters, not the token vocabulary."""
