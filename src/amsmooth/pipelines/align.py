"""Align the tokens of differently-tokenized encoders by the words of the prompt (character offsets).

A *word* is a maximal run of non-whitespace characters of the prompt as the user wrote it. Each encoder's
tokens are mapped to words through the fast tokenizer's character offsets, so "nudity" split as ``nu|dity`` by
CLIP and ``▁nud|ity`` by T5 is one word for both. Multi-vector textual inversion rewrites ``<tok>`` into
``<tok> <tok>_1 …`` before tokenization; the added ``<tok>_i`` words belong to the word they expand.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import torch

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the whitespace-separated words of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def original_word_of(converted: str, original: str) -> list[int]:
    """For each word of ``converted`` (a textual-inversion rewrite of ``original``), its word index in
    ``original``: a word that is not the next original word and contains ``_<digits>`` is an expansion of the
    previous word; any other word advances (so positions stay monotone and in range)."""
    orig = [original[s:e] for s, e in word_spans(original)]
    out, j = [], -1
    for s, e in word_spans(converted):
        w = converted[s:e]
        if not (j + 1 < len(orig) and orig[j + 1] == w) and j >= 0 and re.search(r"_\d+", w):
            out.append(j)
            continue
        j = min(j + 1, max(len(orig) - 1, 0))
        out.append(j)
    return out


def token_words(tokenizer, text: str, content_ids: Sequence[int], original: str | None = None) -> list[int]:  # noqa: ANN001
    """Word index (into ``original``'s words, default ``text``'s) of each of the ``content_ids`` tokens of
    ``text`` (its tokens without special tokens, possibly truncated); a token starting in whitespace belongs to
    the next word. -1 when the text has no word."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    if list(enc["input_ids"][:len(content_ids)]) != list(content_ids):
        raise ValueError("the tokenization differs from the encoder's")
    spans = word_spans(text)
    if not spans:
        return [-1] * len(content_ids)
    starts = [s for s, _ in spans]
    mapping = original_word_of(text, original) if original is not None and original != text else None
    out = []
    for s, _e in enc["offset_mapping"][:len(content_ids)]:
        i = max(bisect.bisect_right(starts, s) - 1, 0)
        if s >= spans[i][1]:
            i = min(i + 1, len(spans) - 1)
        out.append(mapping[i] if mapping else i)
    return out


def word_positions(word_of_token: Sequence[int], start: int, length: int) -> torch.Tensor:
    """``[length]`` tensor: word index at each sequence position (content tokens start at ``start``), -1 else."""
    out = torch.full((length,), -1, dtype=torch.long)
    n = min(len(word_of_token), length - start)
    if n > 0:
        out[start:start + n] = torch.tensor(list(word_of_token[:n]), dtype=torch.long)
    return out
