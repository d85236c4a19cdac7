"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024) — UCE, then closed-form adversarial rounds.

Start from UCE's edit (:func:`amsmooth.unlearn.uce.uce`), W → W'. Then, for each of ``epochs`` rounds:

1. the **adversarial embedding** of each erase text: the embedding c' ``[L, D]`` that regenerates, under the
   edited projections W'_l, what the original projections W_l made of the concept's embedding c ``[L, D]``,

       c' = argmin_c'  Σ_l ||W'_l c' − W_l c||² + ρ·||c'||²  =  (ρ·I + Σ_l W'_lᵀW'_l)⁻¹ (Σ_l W'_lᵀW_l) c

   (l over every cross-attention key and value projection, row by row over the L tokens; ρ the regulariser
   towards 0, ``close_form_emb_regzero`` in ``utils/embedding_calculation/close_form_emb.py``);
2. **erase it** with UCE's closed form (:func:`amsmooth.unlearn.uce.closed_form`) on the current weights: keys
   every row of c', targets the current keys/values of the guide text's rows (``replace``; or ``tensor``), and
   the regulariser — every row of the preserved texts (default: the guide " " once per erase text) kept at
   their current keys/values with weight s_p, and λ·||W'' − W'||² (``edit_model_adversarial``,
   ``erase_methods/uce.py``).

Reference: CharlesGong12/RECE, ``train.py`` + ``scripts/nudity.sh`` (defaults: 5 epochs, λ = 0.1, s_e = 1,
s_p = 0.1, ρ = 0.1, ``close_regzero``). No randomness; see docs/unlearn.md for what differs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import option
from ..encoders import TextEncoder
from ..errors import AmsmoothError
from .esd import check_texts
from .uce import EditTokens, UCESettings, closed_form, cross_attention_projections, targets, uce


@dataclass(frozen=True)
class RECESettings:
    """RECE hyper-parameters; defaults are the reference's nudity run (docs/unlearn.md gives each source)."""

    uce: UCESettings = field(default_factory=UCESettings)  # the first stage (UCE's own reference defaults)
    epochs: int = option(5, "adversarial rounds after UCE")   # scripts/nudity.sh; train.py's argparse default: 10
    lamb: float = option(0.1, "λ of each round's edit", flag="rece-lamb")
    erase_scale: float = option(1.0, "weight of the adversarial embeddings, s_e", flag="rece-erase-scale")
    preserve_scale: float = option(0.1, "weight of the preserved texts in each round, s_p",
                                   flag="rece-preserve-scale")
    regular_scale: float = option(0.1, "ρ, regulariser of the adversarial embedding")   # close_regzero

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        self.uce.validate()
        if self.epochs < 0:
            raise AmsmoothError(f"epochs must be >= 0 (0: UCE only), got {self.epochs}")
        if not self.lamb > 0:
            raise AmsmoothError(f"lamb must be > 0 (it keeps the system invertible), got {self.lamb}")
        for name in ("erase_scale", "preserve_scale"):
            if not getattr(self, name) >= 0:
                raise AmsmoothError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.regular_scale > 0:
            raise AmsmoothError(f"regular_scale must be > 0 (it keeps the embedding's system invertible), got "
                                f"{self.regular_scale}")


def adversarial_embedding(concept: torch.Tensor, edited: Sequence[torch.Tensor], original: Sequence[torch.Tensor],
                          regular_scale: float) -> torch.Tensor:
    """c' ``[L, D]`` = (ρ·I + Σ_l W'_lᵀW'_l)⁻¹ (Σ_l W'_lᵀW_l) c for the concept's embedding c ``[L, D]``, the edited
    and original projections W'_l, W_l ``[out_l, D]`` (float64 inside)."""
    D = concept.shape[-1]
    gram = regular_scale * torch.eye(D, dtype=torch.float64)
    cross = torch.zeros(D, D, dtype=torch.float64)
    for Wp, W in zip(edited, original, strict=True):
        Wp, W = Wp.double(), W.double()
        gram += Wp.T @ Wp
        cross += Wp.T @ W
    return torch.linalg.solve(gram, cross @ concept.double().T).T.to(concept.dtype)


def regeneration_error(c: torch.Tensor, edited: Sequence[torch.Tensor], original: Sequence[torch.Tensor],
                       concept: torch.Tensor) -> float:
    """Σ_l ||W'_l c − W_l concept||² / Σ_l ||W_l concept||²: how far embedding c ``[L, D]``, under the edited
    projections, is from what the original ones made of the concept (0: the concept comes back exactly)."""
    num = sum(float(((c @ Wp.T) - (concept @ W.T)).pow(2).sum()) for Wp, W in zip(edited, original, strict=True))
    return num / sum(float((concept @ W.T).pow(2).sum()) for W in original)


@dataclass
class RECEEpoch:
    """Diagnostics of one adversarial round, per erase text: the regeneration error of the concept's own
    embedding and of the adversarial one before the round's edit, and of the adversarial one after it."""

    concept_error: list[float]
    adversarial_error: list[float]
    adversarial_error_after: list[float]
    adversarial_norm: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)


def rece(pipe: Any, erase: Sequence[str], guide: Sequence[str] | None = None, preserve: Sequence[str] = (),
         settings: RECESettings = RECESettings(),
         progress: Callable[[int, RECEEpoch], None] | None = None) -> tuple[dict[str, torch.Tensor], list[RECEEpoch]]:
    """RECE-edit ``pipe.unet``: UCE (erase → guide, preserving ``preserve``), then ``settings.epochs`` adversarial
    rounds. Returns the edited U-Net's full state dict (``pipe`` unchanged) and each round's diagnostics.

    guide: None (the empty prompt " "), one text, or one per erase text. preserve: kept in the UCE stage and, in
    each round, as the regulariser's texts (default there: " " once per erase text, as the reference).
    Deterministic: no randomness.
    """
    settings.validate()
    erase = check_texts(erase, "erase")
    state = uce(pipe, erase, guide=guide, preserve=preserve, settings=settings.uce)
    guides = [" "] * len(erase) if not guide else [str(g) for g in guide]
    guides = guides * len(erase) if len(guides) == 1 else guides
    retain = list(preserve) if preserve else [" "] * len(erase)
    with torch.no_grad():
        emb = TextEncoder(pipe.text_encoder, pipe.tokenizer).encode([*erase, *guides, *retain]).to("cpu",
                                                                                                   torch.float32)
    E, L, D = len(erase), emb.shape[1], emb.shape[2]
    concepts = emb[:E]                                                            # [E, L, D]
    guide_rows, retain_rows = emb[E:2 * E].reshape(-1, D), emb[2 * E:].reshape(-1, D)
    names = [f"{n}.weight" for n in cross_attention_projections(pipe.unet, settings.uce.with_to_k)]
    base = pipe.unet.state_dict()
    original = [base[n].detach().to("cpu", torch.float32) for n in names]         # W_l, [out_l, D]
    history = []
    for epoch in range(settings.epochs):
        edited = [state[n].to(torch.float32) for n in names]
        adv = [adversarial_embedding(c, edited, original, settings.regular_scale) for c in concepts]
        tokens = EditTokens(torch.cat(adv), guide_rows, retain_rows, [L] * E)
        for n, W in zip(names, edited, strict=True):
            new = closed_form(W, tokens.erase, targets(W, tokens, settings.uce.technique), tokens.preserve,
                              settings.lamb, settings.erase_scale, settings.preserve_scale)
            state[n] = new.to(state[n].dtype).contiguous()
        after = [state[n].to(torch.float32) for n in names]
        record = RECEEpoch([regeneration_error(c, edited, original, c) for c in concepts],
                           [regeneration_error(a, edited, original, c) for a, c in zip(adv, concepts, strict=True)],
                           [regeneration_error(a, after, original, c) for a, c in zip(adv, concepts, strict=True)],
                           [float(a.norm()) for a in adv])
        history.append(record)
        if progress is not None:
            progress(epoch, record)
    return state, history


__all__ = ["RECEEpoch", "RECESettings", "adversarial_embedding", "rece", "regeneration_error"]
