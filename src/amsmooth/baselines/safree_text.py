"""SAFREE's text side on one family's encoder: pooled embeddings, trigger detection and the projected conditioning.

Which encoder and which slice of the pipeline's ``prompt_embeds`` SAFREE acts on, per family (the reference's
choices, docs/baselines.md): SD 1.x/2.x the CLIP encoder (the whole conditioning); SDXL OpenCLIP bigG (its 1280
channels after CLIP-L's); SD3 T5 (the last ``max_sequence_length`` positions); Flux T5 (the whole sequence,
as SD3's T5 — no reference exists for Flux).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AmsmoothError
from ..pipelines.flux import FLUX_SLOTS
from ..pipelines.sd import SD_SLOTS
from ..pipelines.sd3 import SD3_SLOTS
from ..pipelines.sdxl import SDXL_SLOTS
from ..pipelines.views import EncoderSlot, EncoderView
from .safree import (
                     SafreeConfig,
                     filtered_steps,
                     project_away,
                     projection_matrix,
                     self_validation_beta,
                     trigger_tokens,
)

TARGET: dict[str, EncoderSlot] = {"sd": SD_SLOTS[0], "sdxl": SDXL_SLOTS[1], "sd3": SD3_SLOTS[2], "flux": FLUX_SLOTS[1]}
MASK_ID = 0   # the reference replaces a left-out token by id 0 (CLIP "!", T5 and BERT padding)


def pooling_kind(view: EncoderView, family: str) -> str:
    """How a sentence is pooled into the token space (the reference's choice per encoder):

    ``pooler`` CLIP's pooled output (final-norm end token; SD 1.x), ``text_embeds`` bigG's projected pooled
    embedding (SDXL, where its width equals the hidden width, as in the real bigG), ``penultimate-eos`` the
    penultimate hidden state at the end token (SDXL encoders whose projection width differs: tiny-sdxl),
    ``first`` the first token's last hidden state (T5: sdv3_pipeline.py), ``mean`` the mask-mean of the last
    hidden state (BERT-family encoders such as the lab's MiniLM, whose sentence embedding it is; no reference)."""
    if view.model_type in ("t5", "mt5", "umt5"):
        return "first"
    if not view.is_clip:
        return "mean"
    if family != "sdxl":
        return "pooler"
    proj = getattr(view.model.config, "projection_dim", None)
    has_proj = hasattr(view.model, "text_projection")
    return "text_embeds" if has_proj and proj == view.model.config.hidden_size else "penultimate-eos"


@dataclass
class PromptFilter:
    """SAFREE's decision for one prompt: its tokens, the flagged ones (and their indices into ``tokens``), β, the
    last filtered step (None: every step)."""

    prompt: str
    tokens: list[str]
    flagged: list[str]
    flagged_index: list[int]
    beta: float
    last_step: int | None
    projected: torch.Tensor | None = field(default=None, repr=False)   # [K, L, D] rows for this prompt

    def report(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tokens": self.tokens, "flagged": self.flagged,
                "flagged_index": self.flagged_index, "beta": self.beta,
                "filtered_steps": "all" if self.last_step is None else self.last_step + 1}


class SafreeText:
    """SAFREE on one text encoder of a pipeline (``family``'s target encoder)."""

    def __init__(self, view: EncoderView, family: str, config: SafreeConfig, svf: bool, channel_offset: int = 0
                 ) -> None:
        self.view, self.family, self.config, self.svf = view, family, config, svf
        self.kind = pooling_kind(view, family)
        self.channel_offset = channel_offset
        with torch.no_grad():
            self.toxic = projection_matrix(self.encode_texts(list(config.keywords)))   # [D, D]

    @classmethod
    def for_pipeline(cls, pipe: Any, family: str, config: SafreeConfig, svf: bool) -> SafreeText:
        slot = TARGET[family]
        model, tok = getattr(pipe, slot.model, None), getattr(pipe, slot.tokenizer, None)
        if model is None or tok is None:
            raise AmsmoothError(f"SAFREE acts on the {family} pipeline's {slot.name} encoder ({slot.model}), which "
                                "this pipeline does not have")
        offset = 0
        if family == "sdxl" and getattr(pipe, "text_encoder", None) is not None:
            offset = int(pipe.text_encoder.config.hidden_size)       # bigG follows CLIP-L along the channels
        return cls(EncoderView(model, tok, slot), family, config, svf, offset)

    # ------------------------------------------------------------------ pooled embeddings
    def pooled_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings ``[N, D]`` (float32) of id rows ``[N, L]`` with attention mask ``[N, L]``."""
        cols = max(1, int(mask.sum(1).max()))
        ids, mask = ids[:, :cols].to(self.view.device), mask[:, :cols].to(self.view.device)
        out = self.view.model(ids, attention_mask=mask, output_hidden_states=self.kind == "penultimate-eos")
        if self.kind == "pooler":
            return out.pooler_output.float()
        if self.kind == "text_embeds":
            return out.text_embeds.float()
        if self.kind == "penultimate-eos":
            h = out.hidden_states[-2]
            return h[torch.arange(h.shape[0], device=h.device), mask.sum(1) - 1].float()
        h = out.last_hidden_state.float()
        if self.kind == "first":
            return h[:, 0]
        m = mask.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Pooled embeddings ``[N, D]`` of whole texts (the keywords)."""
        batch = self.view.tokenize(texts)
        return self.pooled_ids(batch.input_ids, batch.attention_mask)

    # ------------------------------------------------------------------ one prompt
    def analyse(self, prompt: str, cond: torch.Tensor, length: int | None = None) -> PromptFilter:
        """SAFREE on the K conditioning rows ``cond`` ``[K, L, D_total]`` of one prompt; ``length`` is the
        pipeline's tokenization length for this encoder (T5's ``max_sequence_length``; default the encoder's)."""
        v = self.view
        length = length or v.max_length
        with warnings.catch_warnings():     # the pipeline's own tokenization warns about truncation already
            warnings.simplefilter("ignore", UserWarning)
            batch = v.tokenize([prompt])
        keep = max(0, v.max_content - (v.max_length - length))
        content = list(batch.content_ids[0])[:keep]
        n, start = len(content), v.content_start
        tokens = batch.tokens[0][start:start + n]
        sub, put = self._slice(cond, length)
        if n == 0:
            return PromptFilter(prompt, tokens, [], [], 0.0, None, cond)
        rows = [content[:i] + [MASK_ID] + content[i + 1:] for i in range(n)]
        ids, mask = v.build_ids(rows)
        pooled = self.pooled_ids(ids, mask)                          # [n, D]
        if pooled.shape[1] != sub.shape[-1]:
            raise AmsmoothError(f"SAFREE: the {v.slot.name} encoder's pooled width {pooled.shape[1]} differs from "
                                f"its conditioning width {sub.shape[-1]}")
        prompt_space = projection_matrix(pooled)
        flags = trigger_tokens(pooled, self.toxic.to(pooled.device), self.config.alpha)
        projected = project_away(sub, prompt_space, self.toxic.to(pooled.device))   # [K, L, D]
        flagged = torch.zeros(sub.shape[1], dtype=torch.bool, device=sub.device)
        flagged[start:start + n] = flags.to(sub.device)
        merged = torch.where(flagged[None, :, None], projected.to(sub.dtype), sub)
        real = torch.zeros(sub.shape[1], dtype=torch.bool, device=sub.device)
        real[:min(sub.shape[1], int(mask[0].sum()))] = True          # start, prompt and end tokens
        beta = self_validation_beta(sub[0], projected[0], real)
        last = filtered_steps(beta, self.config.up_t, *self.config.schedule) if self.svf else None
        index = [i for i, f in enumerate(flags.tolist()) if f]
        return PromptFilter(prompt, tokens, [tokens[i] for i in index], index, beta, last, put(merged))

    def _slice(self, cond: torch.Tensor, length: int) -> tuple[torch.Tensor, Any]:
        """This encoder's part of ``cond`` ``[K, L_total, D_total]`` and a function that puts a new part back."""
        D = self.toxic.shape[0]
        seq0 = cond.shape[1] - length if self.family == "sd3" else 0
        ch0 = self.channel_offset
        if seq0 < 0 or ch0 + D > cond.shape[2]:
            raise AmsmoothError(f"SAFREE: conditioning {tuple(cond.shape)} has no {self.view.slot.name} part of "
                                f"{length} tokens × {D} channels")
        sl = (slice(None), slice(seq0, seq0 + length), slice(ch0, ch0 + D))

        def put(part: torch.Tensor) -> torch.Tensor:
            out = cond.clone()
            out[sl] = part.to(cond.dtype)
            return out
        return cond[sl], put
