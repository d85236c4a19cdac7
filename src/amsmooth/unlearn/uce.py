"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024) — a closed-form edit.

Every cross-attention key and value projection W (``to_k``, ``to_v`` of each ``attn2``, ``[out, D]``) is replaced by

    W' = (λ·W + s_e·Σ_i v*_i c_iᵀ + s_p·Σ_j (W c_j) c_jᵀ) · (λ·I + s_e·Σ_i c_i c_iᵀ + s_p·Σ_j c_j c_jᵀ)⁻¹

the minimiser of  s_e·Σ_i ||W' c_i − v*_i||² + s_p·Σ_j ||W' c_j − W c_j||² + λ·||W' − W||²_F.
c_i are token embeddings ``[D]`` of the erase texts, v*_i their targets, c_j token embeddings of the preserved
texts. As in the reference (``train-scripts/train_erase.py``, rohitgandikota/unified-concept-editing):

- erase tokens: the embeddings from the erase text's **last prompt token** through the end of the sequence (end
  and padding tokens), paired position by position with the guide text's embeddings from *its* last prompt token
  (the start token when the guide is empty), both cut to the same length;
- targets (technique ``replace``): v* = W g, the guide token's key/value; ``tensor``: W g minus its component along
  W c (normalised over all the paired tokens together);
- preserved: every token of the empty prompt and of each preserve text, with target W c (unchanged);
- guide default: the empty prompt ("towards uncond"); λ = 0.5, s_e = 1, s_p = max(0.1, 1/#preserved texts).

Embeddings come from the pipeline's own text encoder (:class:`amsmooth.encoders.TextEncoder`), so CLIP and
BERT-family encoders work alike. Only weights change; a projection's bias, if it has one, is kept (SD has none).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

from ..config import option
from ..encoders import TextEncoder
from ..errors import AmsmoothError
from .esd import check_texts

Technique = Literal["replace", "tensor"]
TECHNIQUES: tuple[str, ...] = get_args(Technique)


@dataclass(frozen=True)
class UCESettings:
    """UCE hyper-parameters. Defaults are the reference script's (docs/unlearn.md gives the source of each)."""

    lamb: float = option(0.5, "regularisation λ towards the original weights")
    erase_scale: float = option(1.0, "weight of the erase terms")
    preserve_scale: float | None = option(None, "weight of the preserve terms",
                                          default="max(0.1, 1/number of preserved texts, the empty prompt included)")
    technique: Technique = option("replace", "the edit's targets")
    with_to_k: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.technique not in TECHNIQUES:
            raise AmsmoothError(f"unknown UCE technique '{self.technique}'; choose one of {', '.join(TECHNIQUES)}")
        if not self.lamb > 0:
            raise AmsmoothError(f"lamb must be > 0 (it keeps the system invertible), got {self.lamb}")
        if not self.erase_scale >= 0:
            raise AmsmoothError(f"erase_scale must be >= 0, got {self.erase_scale}")
        if self.preserve_scale is not None and not self.preserve_scale >= 0:
            raise AmsmoothError(f"preserve_scale must be >= 0, got {self.preserve_scale}")


def cross_attention_projections(unet: torch.nn.Module, with_to_k: bool = True) -> dict[str, torch.nn.Linear]:
    """``{module name: Linear}`` of every ``attn2.to_v`` and (with_to_k) ``attn2.to_k`` of the U-Net."""
    kinds = ("to_k", "to_v") if with_to_k else ("to_v",)
    out = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            for kind in kinds:
                proj = getattr(module, kind, None)
                if isinstance(proj, torch.nn.Linear):
                    out[f"{name}.{kind}"] = proj
    return out


@dataclass
class EditTokens:
    """The token embeddings of a UCE edit: erase keys c_i and guide embeddings g_i ``[N, D]`` (paired row by row),
    preserved embeddings c_j ``[M, D]``; sizes: how many of the N rows each erase text contributes."""

    erase: torch.Tensor
    guide: torch.Tensor
    preserve: torch.Tensor
    sizes: list[int]


def edit_tokens(encoder: Any, erase: Sequence[str], guide: Sequence[str], preserve: Sequence[str]) -> EditTokens:
    """Embed the texts with ``encoder`` (a TextEncoder) and pick the tokens the reference edits (module doc)."""
    if len(guide) != len(erase):
        raise AmsmoothError(f"{len(guide)} guide texts for {len(erase)} erase texts; give one guide, or one per "
                            f"erase text")
    batch = encoder.tokenize([*erase, *guide, "", *preserve])
    with torch.no_grad():
        emb = encoder.encode(batch).to("cpu", torch.float32)                  # [B, L, D]
    E, L = len(erase), emb.shape[1]
    last = [max(encoder.content_start + len(c) - 1, 0) for c in batch.content_ids]   # last prompt token (or start)
    keys, guides = [], []
    for i in range(E):
        a, b = last[i], last[E + i]
        far = max(a, b)
        keys.append(emb[i, a:L - (far - a)])
        guides.append(emb[E + i, b:L - (far - b)])
    return EditTokens(torch.cat(keys), torch.cat(guides), emb[2 * E:].reshape(-1, emb.shape[-1]),
                      [len(k) for k in keys])


def closed_form(W: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, preserve: torch.Tensor,
                lamb: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """W' for W ``[out, D]``, erase keys ``[N, D]`` with targets ``[N, out]`` and preserved keys ``[M, D]``
    (float64 inside; the solve replaces the reference's explicit inverse, same result)."""
    W64, K, V, P = (x.double() for x in (W, keys, values, preserve))
    rhs = lamb * W64 + erase_scale * V.T @ K + preserve_scale * (W64 @ P.T) @ P                # [out, D]
    gram = (lamb * torch.eye(W.shape[1], dtype=torch.float64) + erase_scale * K.T @ K
            + preserve_scale * P.T @ P)                                                        # [D, D], symmetric
    return torch.linalg.solve(gram, rhs.T).T.to(W.dtype)


def targets(W: torch.Tensor, tokens: EditTokens, technique: str) -> torch.Tensor:
    """v* ``[N, out]``: W g (replace), or, per erase text, W g without its component along W c (tensor; the
    projection is over all of that text's paired tokens at once, as in the reference)."""
    v = tokens.guide @ W.T
    if technique == "replace":
        return v
    out = []
    for vs, us in zip(v.split(tokens.sizes), (tokens.erase @ W.T).split(tokens.sizes), strict=True):
        u = us / us.norm()
        out.append(vs - (u * vs).sum() * u)
    return torch.cat(out)


def uce(pipe: Any, erase: Sequence[str], guide: Sequence[str] | None = None, preserve: Sequence[str] = (),
        settings: UCESettings = UCESettings()) -> dict[str, torch.Tensor]:
    """UCE-edit ``pipe.unet`` to erase ``erase`` towards ``guide`` (default: the empty prompt) while preserving
    ``preserve``; returns the edited U-Net's full state dict (``pipe`` unchanged). Deterministic: no randomness.

    guide: None, one text for all erase texts, or one per erase text.
    """
    settings.validate()
    erase = check_texts(erase, "erase")
    guide = [" "] * len(erase) if not guide else [str(g) for g in guide]
    if len(guide) == 1:
        guide = guide * len(erase)
    preserve = check_texts(preserve, "preserve") if preserve else []
    s_p = settings.preserve_scale if settings.preserve_scale is not None else max(0.1, 1 / (1 + len(preserve)))
    tokens = edit_tokens(TextEncoder(pipe.text_encoder, pipe.tokenizer), erase, guide, preserve)
    projections = cross_attention_projections(pipe.unet, settings.with_to_k)
    if not projections:
        raise AmsmoothError("the U-Net has no cross-attention (attn2) key/value projections for UCE to edit")
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in pipe.unet.state_dict().items()}
    for name, proj in projections.items():
        W = proj.weight.detach().to("cpu", torch.float32)
        new = closed_form(W, tokens.erase, targets(W, tokens, settings.technique), tokens.preserve,
                          settings.lamb, settings.erase_scale, s_p)
        state[f"{name}.weight"] = new.to(state[f"{name}.weight"].dtype).contiguous()
    return state
