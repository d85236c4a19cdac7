"""Adaptive Median Smoothing over all text encoders of a pipeline (SD 1.x/2.x, SDXL, SD3, Flux).

Per encoder e (an :class:`EncoderView`): relevance sim_e,j of each token j (Algorithm 1, on the output that the
pipeline uses, with that encoder's own concept direction). Combination rule across encoders, by word (see
:mod:`.align`): a token's score is the larger of its own and the highest score *another* encoder gives any token of
the same word, ``sim_e,j ← max(sim_e,j, max_{e'≠e} max_{i ∈ word(j)} sim_e',i)`` — a word flagged by one encoder is
noised in all; with one encoder this is exactly the single-encoder score. Then σ_e,j = σ0·exp(k·sim_e,j) on each
encoder's token embeddings; the n noisy passes and the median happen in the pipeline (``mixin``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..concepts import Concept
from ..config import SmoothingConfig
from ..encoders import TokenizedBatch
from ..errors import AmsmoothError
from ..relevance import noise_schedule
from ..smoothing import AdaptiveMedianSmoothing, Generators, Relevance, prompt_noise
from .align import token_words, word_positions, word_spans
from .bundle import resolve_bundle
from .views import EncoderView


@dataclass
class SlotPlan:
    """One encoder's share of a call: its tokenization (at the relevance length), scores and the call's σ.

    sim_own / sim / word ``[B, Lr]`` (own score, combined score, word index or -1); sigma ``[B, L]`` at the
    pipeline's tokenization length L for this call.
    """

    view: EncoderView
    raw: list[str]
    texts: list[str]
    batch: TokenizedBatch
    sim_own: torch.Tensor
    sim: torch.Tensor
    word: torch.Tensor
    sigma: torch.Tensor
    rel: Relevance


@dataclass
class Plan:
    """Everything the noisy passes need, per encoder (in the pipeline's order), plus the prompts."""

    prompts: list[str]
    slots: list[SlotPlan] = field(default_factory=list)

    @property
    def all_zero(self) -> bool:
        """True when no encoder gets any noise (σ0 = 0, or prompts without tokens)."""
        return all(float(s.sigma.max()) == 0.0 for s in self.slots) if self.slots else True


class FamilyDefense:
    """AMS over several text encoders: one :class:`AdaptiveMedianSmoothing` (scores, word cache) per encoder."""

    def __init__(self, views: Sequence[EncoderView], concepts: dict[str, Sequence[Concept]],
                 config: SmoothingConfig | None = None) -> None:
        if not views:
            raise AmsmoothError("the pipeline has no text encoder to defend")
        self.views = list(views)
        self.config = config or SmoothingConfig()
        self.ams = {v.slot.name: AdaptiveMedianSmoothing(v, concepts[v.slot.name], self.config) for v in self.views}

    @classmethod
    def build(cls, views: Sequence[EncoderView], concepts: Sequence[str | Concept],
              config: SmoothingConfig | None = None) -> FamilyDefense:
        """Resolve ``concepts`` (built-in names, pairs CSVs, saved concept/bundle files, Concept objects) for
        every encoder; built-in directions are computed per encoder on first use and cached."""
        if not concepts:
            raise AmsmoothError("at least one concept is needed (e.g. --concept nudity)")
        per = {v.slot.name: [resolve_bundle(c, v) for c in concepts] for v in views}
        return cls(views, per, config)

    @classmethod
    def from_smoothing(cls, views: Sequence[EncoderView], smoothings: Sequence[AdaptiveMedianSmoothing]
                       ) -> FamilyDefense:
        """A defense from ready :class:`AdaptiveMedianSmoothing` objects, one per view in order (their caches and
        prepared method state are kept: the server shares them across requests). All share one config."""
        if not views or len(views) != len(smoothings):
            raise AmsmoothError(f"{len(smoothings)} smoothings for {len(views)} text encoders; give one each")
        defense = cls.__new__(cls)
        defense.views, defense.config = list(views), smoothings[0].config
        defense.ams = {v.slot.name: a for v, a in zip(views, smoothings, strict=True)}
        return defense

    @property
    def names(self) -> list[str]:
        return [v.slot.name for v in self.views]

    # ------------------------------------------------------------------ scores
    def plan(self, prompts: Sequence[str], texts: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None,
             lengths: dict[str, int] | None = None) -> Plan:
        """Scores and σ for ``prompts``. texts: per encoder, (its prompts as given — another prompt_2/3 —, what
        its tokenizer sees after a textual-inversion rewrite); default the prompts for both. lengths: per
        encoder, the call's tokenization length (default the encoder's)."""
        prompts = [str(p) for p in prompts]
        texts = texts or {}
        lengths = lengths or {}
        plan = Plan(prompts)
        with torch.no_grad():
            for v in self.views:
                raw, tx = texts.get(v.slot.name, (prompts, prompts))
                raw, tx = [str(t) for t in raw], [str(t) for t in tx]
                if len(raw) != len(prompts) or len(tx) != len(prompts):
                    raise AmsmoothError(f"{v.slot.name}: {len(tx)} prompts for a batch of {len(prompts)}")
                batch = v.tokenize(tx)
                rel = self.ams[v.slot.name].scores(batch)
                word = torch.stack([self._words(v, tx[b], raw[b], batch, b) for b in range(len(batch))])
                plan.slots.append(SlotPlan(v, raw, tx, batch, rel.sim, rel.sim.clone(), word, rel.sigma, rel))
        self._combine(plan)
        for s in plan.slots:
            s.sigma = self._sigma(s, lengths.get(s.view.slot.name, s.view.max_length))
        return plan

    @staticmethod
    def _words(view: EncoderView, text: str, prompt: str, batch: TokenizedBatch, b: int) -> torch.Tensor:
        """Word index (into the prompt's words) at each position of row b; -1 off the prompt's tokens."""
        if not word_spans(prompt) or not word_spans(text):
            return torch.full((view.max_length,), -1, dtype=torch.long)
        try:
            words = token_words(view.tokenizer, text, batch.content_ids[b],
                                original=prompt if text != prompt else None)
        except ValueError:
            return torch.full((view.max_length,), -1, dtype=torch.long)
        return word_positions(words, view.content_start, view.max_length)

    @staticmethod
    def _combine(plan: Plan) -> None:
        """sim_e,j ← max(own, the best score another encoder that read the same prompt gives the same word)."""
        for b in range(len(plan.prompts)):
            best: list[dict[int, float]] = []
            for s in plan.slots:
                per_word: dict[int, float] = {}
                for pos, w in enumerate(s.word[b].tolist()):
                    if w >= 0:
                        per_word[w] = max(per_word.get(w, float("-inf")), float(s.sim_own[b, pos]))
                best.append(per_word)
            for i, s in enumerate(plan.slots):
                others = [best[j] for j, o in enumerate(plan.slots) if j != i and o.raw[b] == s.raw[b]]
                for pos, w in enumerate(s.word[b].tolist()):
                    vals = [o[w] for o in others if w in o]
                    if w >= 0 and vals:
                        s.sim[b, pos] = max(float(s.sim_own[b, pos]), max(vals))

    def _sigma(self, s: SlotPlan, length: int) -> torch.Tensor:
        """σ ``[B, length]`` for the pipeline's tokenization at ``length`` (≤ the view's length)."""
        v, cfg = s.view, self.config
        if length > v.max_length:
            raise AmsmoothError(f"{v.slot.name}: sequence length {length} exceeds the encoder's {v.max_length}")
        keep = v.max_content - (v.max_length - length)
        mask = torch.zeros(len(s.texts), length, dtype=torch.bool)
        for b, ids in enumerate(s.batch.content_ids):
            mask[b, v.content_start:v.content_start + min(len(ids), keep)] = True
        sigma0 = self.ams[v.slot.name].sigma0   # in the encoder's own units (config.sigma_unit)
        return noise_schedule(s.sim[:, :length], sigma0, cfg.k, mask, cfg.noise_special_tokens)

    # ------------------------------------------------------------------ noise
    def noise(self, plan: Plan, n: int, generator: Generators) -> list[torch.Tensor]:
        """Per encoder, in order, G ~ N(0, diag σ²) on its token embeddings: ``[n·B, L, D]`` float32 (row i·B + b
        is sample i of prompt b), each encoder's draw in turn from ``generator`` — per prompt, as in
        :func:`amsmooth.smoothing.prompt_noise`, so a prompt's noise does not depend on its batch."""
        out = []
        for s in plan.slots:
            B, L = s.sigma.shape
            D = s.view.hidden_size
            z = prompt_noise(n, B, L, D, generator)
            g = z * s.sigma.to(z.device, torch.float32)[None, :, :, None]
            out.append(g.reshape(n * B, L, D))
        return out

    # ------------------------------------------------------------------ report
    def report(self, plan: Plan) -> list[dict]:
        """Per prompt: ``tokens`` (the first encoder's, in single-encoder AMS's format, sim = combined score),
        ``encoders`` (per encoder: token, word, word_index, position, sim_own, sim, sigma), ``words`` (per word of
        the prompt: each encoder's best own score and the best combined one) and ``dropped``."""
        out = []
        for b, prompt in enumerate(plan.prompts):
            words = [prompt[s:e] for s, e in word_spans(prompt)]
            per_word = [{"word": w, "sims": {}, "sim": None} for w in words]
            encoders = {}
            for s in plan.slots:
                rows, own = [], [s.raw[b][x:y] for x, y in word_spans(s.raw[b])]
                for pos in s.batch.content_mask[b].nonzero().flatten().tolist():
                    w = int(s.word[b, pos])
                    row = {"token": s.batch.tokens[b][pos], "word": own[w] if 0 <= w < len(own) else "",
                           "word_index": w,
                           "position": pos, "sim_own": float(s.sim_own[b, pos]), "sim": float(s.sim[b, pos]),
                           "sigma": float(s.sigma[b, pos]) if pos < s.sigma.shape[1] else 0.0}
                    rows.append(row)
                    if w >= 0 and s.raw[b] == prompt:
                        d, name = per_word[w], s.view.slot.name
                        d["sims"][name] = max(d["sims"].get(name, row["sim_own"]), row["sim_own"])
                        d["sim"] = row["sim"] if d["sim"] is None else max(d["sim"], row["sim"])
                encoders[s.view.slot.name] = rows
            out.append({"prompt": prompt, "tokens": self._legacy_tokens(plan.slots[0], b), "encoders": encoders,
                        "words": [w for w in per_word if w["sims"]], "dropped": plan.slots[0].batch.dropped[b]})
        return out

    def _legacy_tokens(self, s: SlotPlan, b: int) -> list[dict]:
        """The first encoder's tokens as :meth:`AdaptiveMedianSmoothing.relevance` describes them."""
        sigma = torch.zeros_like(s.sim)
        sigma[:, :s.sigma.shape[1]] = s.sigma
        rel = Relevance(s.sim, s.rel.sim_local, s.rel.sim_global, sigma)
        return self.ams[s.view.slot.name].describe(s.batch, rel, b)["tokens"]
