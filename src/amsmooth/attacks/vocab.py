"""The token vocabulary an attack may search, and candidate prompts built from token ids.

Only tokens that are a whole word on their own are searched: token i is kept when it is not a special token and
``tokenize(decode([i])) == [i]``. Such tokens decode to text that re-tokenizes to the same ids (CLIP: tokens ending
in ``</w>``; WordPiece: no ``##`` pieces, no ``[unused]`` slots), so an adversarial prompt is plain text that
the pipeline reads exactly as it was optimized.
"""
from __future__ import annotations

import json
from typing import Sequence

import torch

from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError


_WORD_IDS: dict[str, torch.Tensor] = {}   # per encoder identity: the vocabulary scan takes seconds


def word_token_ids(encoder: TextEncoder) -> torch.Tensor:
    """Ids of the non-special tokens whose decoded text re-tokenizes to exactly that token: ``[V']``."""
    key = json.dumps([encoder.fingerprint(), type(encoder.tokenizer).__name__, len(encoder.tokenizer)],
                     sort_keys=True)
    if key not in _WORD_IDS:
        _WORD_IDS[key] = _scan_word_ids(encoder)
    return _WORD_IDS[key]


def _scan_word_ids(encoder: TextEncoder) -> torch.Tensor:
    tok = encoder.tokenizer
    size = int(encoder.embedding.weight.shape[0])
    ids = list(range(min(size, len(tok))))
    back = tok(tok.batch_decode([[i] for i in ids]), add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids)
    kept = [i for i, b in zip(ids, back) if b == [i] and i not in special]
    if not kept:
        raise AmsmoothError(f"{encoder.name}: no token of the vocabulary decodes and re-tokenizes to itself")
    return torch.tensor(kept, dtype=torch.long)


class Vocabulary:
    """Searchable token ids and their embeddings, with random draws and L2 projection onto real tokens."""

    def __init__(self, encoder: TextEncoder, ids: torch.Tensor | None = None) -> None:
        self.encoder = encoder
        self.ids = word_token_ids(encoder) if ids is None else ids.long()
        weight = encoder.embedding.weight.detach()
        self.embeddings = weight[self.ids.to(weight.device)].float()    # [V', D]
        self._sq_norms = (self.embeddings ** 2).sum(1)                   # [V']
        self.scale = float(self.embeddings.std())                        # coordinate scale of the embeddings

    def __len__(self) -> int:
        return int(self.ids.numel())

    def sample(self, shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        """Uniform random token ids of the given shape (drawn on CPU from ``generator``)."""
        pick = torch.randint(len(self), tuple(shape), generator=generator)
        return self.ids[pick]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` ``[...]`` → ``[..., D]`` (float32, no grad)."""
        return self.encoder.embedding.weight.detach()[ids.to(self.encoder.device)].float()

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Nearest searchable token in L2 for each row of ``points`` ``[K, D]`` → ids ``[K]`` (CPU)."""
        p = points.detach().float().to(self.embeddings.device)
        dist = self._sq_norms[None, :] - 2 * p @ self.embeddings.T   # ||e_v||² − 2⟨e_v, p⟩ (+ ||p||², constant)
        return self.ids[dist.argmin(1).cpu()]


def candidate_batch(encoder: TextEncoder, prefix: TokenizedBatch, suffixes: Sequence[Sequence[int]],
                    prepend: bool = False) -> TokenizedBatch:
    """Prompts ``prefix tokens + suffix`` for each suffix (``suffix + prefix tokens`` when ``prepend``), as a batch
    ``[B, L]`` built from ids (no re-tokenizing).

    ``prefix`` is the one-prompt tokenization of the kept prompt part (possibly empty). Each suffix token is one
    word, which holds for the tokens of :class:`Vocabulary`.
    """
    base = list(prefix.content_ids[0])
    adv = [[int(t) for t in s] for s in suffixes]
    contents = [a + base for a in adv] if prepend else [base + a for a in adv]
    if any(len(c) > encoder.max_content for c in contents):
        raise AmsmoothError(f"candidate longer than the encoder's {encoder.max_content} prompt tokens")
    input_ids, mask = encoder.build_ids(contents)
    B, L, start = len(contents), encoder.max_length, encoder.content_start
    content_mask = torch.zeros(B, L, dtype=torch.bool)
    word_index = torch.full((B, L), -1, dtype=torch.long)
    prefix_words = prefix.word_index[0, start:start + len(base)]
    for b, (c, a) in enumerate(zip(contents, adv)):
        content_mask[b, start:start + len(c)] = True
        if prepend:   # K one-token words, then the prompt's words numbered after them
            word_index[b, start:start + len(a)] = torch.arange(len(a))
            word_index[b, start + len(a):start + len(c)] = prefix_words + len(a)
        else:
            first_new = int(prefix_words.max()) + 1 if len(base) else 0
            word_index[b, start:start + len(base)] = prefix_words
            word_index[b, start + len(base):start + len(c)] = torch.arange(first_new, first_new + len(a))
    tokens = [encoder.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
    texts = [encoder.tokenizer.decode(c) for c in contents]
    return TokenizedBatch(texts, input_ids, mask, content_mask, word_index, tokens, contents, [""] * B)
