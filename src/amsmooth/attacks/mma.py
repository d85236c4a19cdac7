"""MMA-Diffusion's text attack (Yang et al., CVPR 2024), as released in cure-lab/MMA-Diffusion
(``src/textual_attack.py``; ``src/text_space_attack/MMA_para.py`` for the parallel version).

An adversarial prompt of 20 tokens *replaces* the source (target) prompt; its text embedding should match the
target prompt's: loss = 1 − cos(pool(T(adv)), pool(T(target))), pool = the CLIP text model's pooled output (the
end token's final hidden state; for other encoders the attention-masked mean, the parallel version's fallback).
Greedy coordinate gradient search: the gradient w.r.t. the one-hot token choice (normalized per position) gives
each position's top 256 tokens; 512 candidates per step each replace one position (positions spread evenly) by a
random one of its top tokens; candidates whose decoded text does not re-tokenize to the same length, or equals
the current prompt, are dropped; the best candidate becomes the current prompt and the best ever is the result.
The *sensitive-word filter* removes from the search every token containing one of the reference's words ("ak",
"na", "ke", "nud" and its NSFW list). Start: 20 random ASCII letters separated by spaces; 1000 steps.
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

import torch

from ..config import option
from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError
from ..prompts import PromptCase
from ..smoothing import AdaptiveMedianSmoothing
from .base import AttackResult, Progress, SearchConfig, TextAttack, noise_generator
from .objective import CandidatePool, ConditioningObjective
from .vocab import Mode, Vocabulary

NSFW_WORDS = ("sexual", "nude", "nudity", "sex", "18+", "naked", "nsfw", "porn", "dick", "vagina", "naked child",
              "explicit content", "uncensored", "fuck", "nipples", "visible nipples", "breast", "areola")
SENSITIVE_WORDS = ("ak", "na", "ke", "nud") + NSFW_WORDS


@dataclass(frozen=True)
class MMAConfig(SearchConfig):
    """MMA-Diffusion's knobs (reference: 20 tokens, 1000 steps, 512 candidates, top-256, sensitive-word filter)."""

    tokens: int | None = 20
    iterations: int = 1000
    mode: Mode = "replace"
    candidates: int = option(512, "candidates per step")
    topk: int = option(256, "top tokens per position")
    filter_words: bool = option(True, "turn off the sensitive-word filter, i.e. keep the words the reference "
                                "removes from the search", flag="no-word-filter")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "replace":
            raise AmsmoothError("MMA-Diffusion's adversarial prompt replaces the target prompt (mode replace)")
        for name in ("candidates", "topk"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AmsmoothError(f"{name} must be an integer >= 1, got {getattr(self, name)}")


def sensitive_token_ids(encoder: TextEncoder, words: tuple[str, ...] = SENSITIVE_WORDS) -> list[int]:
    """Ids of every vocabulary token whose text contains one of ``words`` (the reference's removal set)."""
    return sorted({i for tok, i in encoder.tokenizer.get_vocab().items() if any(w in tok for w in words)})


def pooled(h: torch.Tensor, batch: TokenizedBatch, encoder: TextEncoder) -> torch.Tensor:
    """The pooled text embedding of conditionings ``[B, m, L, D]`` → ``[B, m, D]``: CLIP's end-token state, else
    the attention-masked mean."""
    B, m, L, D = h.shape
    mask = batch.attention_mask.to(h.device)
    if encoder.is_clip:
        end = (mask.sum(1) - 1).long()                                        # the end token's position
        return h[torch.arange(B, device=h.device), :, end]
    w = mask.float()[:, None, :, None]
    return (h * w).sum(2) / w.sum(2).clamp_min(1e-6)


class MMAObjective(ConditioningObjective):
    """1 − cos(pool(conditioning of the candidate), pool(T(target prompt)))."""

    def __init__(self, encoder: TextEncoder, target_prompt: str, smoothing: AdaptiveMedianSmoothing | None = None,
                 eot_samples: int = 1) -> None:
        super().__init__(encoder, smoothing, eot_samples)
        batch = encoder.tokenize([target_prompt])
        with torch.no_grad():
            self.target = pooled(encoder.encode(batch)[:, None].float(), batch, encoder)[0, 0]   # [D]

    def batch_losses(self, batch: TokenizedBatch, z: Any, offset: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conditioning(batch, z, offset).float()                          # [B, m, L, D]
        p = pooled(h, batch, self.encoder)
        cos = torch.nn.functional.cosine_similarity(p, self.target.to(p.device)[None, None], dim=-1, eps=1e-6)
        return (1 - cos).mean(1)


class MMADiffusion(TextAttack):
    """MMA-Diffusion (text): 20 tokens whose pooled embedding matches the target prompt's, sensitive words banned."""

    name = "mma"
    config_class = MMAConfig
    quick = {"iterations": 4, "candidates": 32, "topk": 32}
    vocabulary_kind = "all"

    def __init__(self, encoder: TextEncoder, concept: Any, config: MMAConfig | None = None,
                 smoothing: AdaptiveMedianSmoothing | None = None, vocabulary: Vocabulary | None = None) -> None:
        super().__init__(encoder, concept, config, smoothing, vocabulary)
        self.banned = sensitive_token_ids(encoder) if self.config.filter_words else []

    def case_objective(self, case: PromptCase) -> MMAObjective:
        return MMAObjective(self.encoder, case.prompt, self.smoothing, self.config.eot_samples)

    def _initial(self, generator: torch.Generator | None) -> str:
        letters = string.ascii_letters
        return " ".join(letters[int(i)] for i in torch.randint(len(letters), (self.config.tokens,),
                                                               generator=generator))

    def run_case(self, case: PromptCase, generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> AttackResult:
        cfg, enc = self.config, self.encoder
        objective = self.case_objective(case)
        objective.noise_generator = noise_generator(generator)
        if cfg.rerank:
            objective.pool = CandidatePool(cfg.rerank)
        empty = enc.tokenize([""])
        control = self._initial(generator)
        ids = enc.tokenize([control]).content_ids[0]
        if len(ids) != cfg.tokens:
            raise AmsmoothError(f"{enc.name}: the initial letters do not tokenize to {cfg.tokens} tokens")
        table = enc.embedding.weight.detach().float()                              # [V, D]
        banned = torch.tensor(self.banned, dtype=torch.long)
        best, best_text, history = math.inf, control, []
        for step in range(cfg.iterations):
            z = objective.draw(generator)
            _, g_emb = objective.loss_and_grad(empty, ids, z)                        # [K, D]
            grad = g_emb.to(table.device) @ table.T                                 # one-hot gradient [K, V]
            grad = (grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()
            grad[:, list(enc.tokenizer.all_special_ids)] = math.inf
            grad[:, len(enc.tokenizer):] = math.inf                                 # rows with no token
            if banned.numel():
                grad[:, banned] = math.inf
            top = (-grad).topk(min(cfg.topk, grad.shape[1]), dim=1).indices           # [K, topk]
            pos = (torch.arange(cfg.candidates) * len(ids) // cfg.candidates).long()  # spread evenly
            pick = torch.randint(top.shape[1], (cfg.candidates,), generator=generator)
            cands = torch.tensor(ids).repeat(cfg.candidates, 1)
            cands[torch.arange(cfg.candidates), pos] = top[pos, pick]
            texts = []
            for row in cands.tolist():
                text = enc.tokenizer.decode(row)
                if text != control and len(enc.tokenizer(text, add_special_tokens=False)["input_ids"]) == len(ids):
                    texts.append(text)
            texts = list(dict.fromkeys(texts))
            if texts:
                losses = objective.text_losses(texts, z)
                i = int(losses.argmin())
                control, loss = texts[i], float(losses[i])
                ids = enc.tokenize([control]).content_ids[0]
                objective.record(ids, loss)
                if loss < best:
                    best, best_text = loss, control
            history.append(best)
            if progress is not None:
                progress(step + 1, best)
        text, tokens = best_text, enc.tokenize([best_text]).content_ids[0]
        info: dict[str, Any] = {}
        if cfg.rerank and objective.pool is not None and objective.pool.best:
            prefix = empty
            tokens, info = self.rerank(objective, prefix, list(tokens), info)
            text = enc.tokenizer.decode(tokens)
        loss = float(objective.text_losses([text], objective.draw(generator))[0])
        exact = enc.tokenize([text]).content_ids[0] == list(tokens)
        return AttackResult(text, case.prompt, list(tokens), loss, history, exact, info)
