"""One text encoder of a multi-encoder pipeline, read the way that pipeline reads it (for relevance scoring).

A pipeline conditions on a *selection* of each encoder's outputs: SD 1.x the last hidden state, SDXL/SD3 the
penultimate hidden state of each CLIP, Flux the pooled CLIP output, SD3/Flux T5's last hidden state. An
``EncoderView`` is a :class:`amsmooth.encoders.TextEncoder` whose ``encode_ids`` returns that selection, so the
relevance code (Algorithm 1) and concept directions work per encoder unchanged; its fingerprint names the
selection, so a concept direction is cached per encoder *and* per selection.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..encoders import TextEncoder

OUTPUTS = ("last", "penultimate", "pooled")


@dataclass(frozen=True)
class EncoderSlot:
    """Where a pipeline keeps one text encoder and how it reads it.

    name: short label (``clip-l``, ``clip-g``, ``t5``); model / tokenizer: the pipeline's attribute names;
    prompt_arg: the ``encode_prompt`` argument that feeds it (``prompt``, ``prompt_2``, ``prompt_3``);
    output: what the pipeline conditions on (``last`` / ``penultimate`` hidden state ``[N, L, D]`` or ``pooled``
    ``[N, D]``); max_length: tokenization length (None: the tokenizer's own, CLIP's 77); length_arg: the call
    argument that overrides it (``max_sequence_length`` for T5); trim_padding: relevance passes use the attention
    mask and pad only to the longest sequence of their batch (T5: bidirectional, 256/512 long);
    converts_ti: the pipeline applies multi-vector textual-inversion conversion before this tokenizer.
    """

    name: str
    model: str
    tokenizer: str
    prompt_arg: str
    output: str = "last"
    max_length: int | None = None
    length_arg: str | None = None
    trim_padding: bool = False
    converts_ti: bool = True


class EncoderView(TextEncoder):
    """``TextEncoder`` over the output a pipeline uses: ``encode_ids`` → ``[N, L, D]`` (or ``[N, 1, D]`` pooled).

    With ``trim_padding`` the pass runs on the first ``max(mask.sum)`` columns with the attention mask and the
    outputs at padding positions are zero, so a word alone costs a few positions, not 512; the cosine over the
    flattened ``[L, D]`` is unchanged by zero rows.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, slot: EncoderSlot,  # noqa: ANN001
                 max_length: int | None = None) -> None:
        self.slot = slot
        super().__init__(model, tokenizer, max_length=max_length or slot.max_length, name=slot.name)

    def fingerprint(self) -> dict[str, str | int]:
        """The encoder's fingerprint, plus the output selection unless it is the plain last hidden state (so a
        concept built with a plain :class:`TextEncoder` fits an SD 1.x view, and shares its cache entry)."""
        fp = super().fingerprint()
        if self.slot.output != "last" or self.slot.trim_padding:
            fp["output"] = self.slot.output + ("+masked" if self.slot.trim_padding else "")
        return fp

    @property
    def direction_shape(self) -> tuple[int, int]:
        """``(1, D)`` for a pooled output, else ``(L, D)``."""
        return (1, self.hidden_size) if self.slot.output == "pooled" else (self.max_length, self.hidden_size)

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
        """The slot's output for ids ``[N, L]``: ``[N, L, D]`` (``[N, 1, D]`` for pooled); one forward pass."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        L = input_ids.shape[1]
        if self.slot.trim_padding:
            cols = max(1, int(mask.sum(1).max()))
            input_ids, mask = input_ids[:, :cols], mask[:, :cols]
            noise = None if noise is None else noise[:, :cols]
        kwargs: dict = {"output_hidden_states": self.slot.output == "penultimate"}
        if self.slot.trim_padding or (not self.is_clip and self.slot.output != "pooled"):
            kwargs["attention_mask"] = mask.to(self.device)
        from contextlib import nullcontext

        with self.noise_hook(noise) if noise is not None else nullcontext():
            out = self.model(input_ids.to(self.device), **kwargs)
        self.calls += 1
        self.rows += int(input_ids.shape[0])
        if self.slot.output == "pooled":
            return out.pooler_output[:, None, :]
        h = out.hidden_states[-2] if self.slot.output == "penultimate" else out[0]
        if self.slot.trim_padding:
            h = h * mask.to(h.device, h.dtype)[..., None]
            h = torch.nn.functional.pad(h, (0, 0, 0, L - h.shape[1]))
        return h
