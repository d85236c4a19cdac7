"""The token vocabulary an attack may search, where its tokens go in the prompt, and candidate prompts built from
token ids.

Two search spaces (``Vocabulary(kind=...)``):

- ``"words"``: tokens that are a whole word on their own (not special, ``tokenize(decode([i])) == [i]``; CLIP:
  tokens ending in ``</w>``, WordPiece: no ``##`` pieces or ``[unused]`` slots). Such tokens decode to text that
  re-tokenizes to the same ids, so an adversarial prompt is read exactly as it was optimized.
- ``"all"``: every token of the vocabulary but the special and reserved ones (Ring-A-Bell, UnlearnDiffAtk,
  P4D, MMA-Diffusion search the whole vocabulary). Sub-word pieces may merge when the decoded text is
  tokenized again; the attacks report whether it did (``exact``) and score the text as the pipeline
  reads it.

A :class:`Layout` places the K searched tokens relative to the (kept part of the) source prompt: ``replace``
(the K tokens are the prompt), ``append``, ``prepend``, or ``interleave`` (P4D-K: one searched token before
every ``every`` source tokens).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..encoders import TextEncoder, TokenizedBatch
from ..errors import AmsmoothError

_IDS: dict[str, torch.Tensor] = {}   # per encoder identity and kind: the vocabulary scan takes seconds
KINDS = ("words", "all")
# Reserved slots that are in the vocabulary but mean nothing: BERT/MiniLM's ``[unused0]`` … ``[unused993]`` (an
# attack's prompt showed ``[unused860]``, issue 28), Gemma-style ``<unused12>``.
RESERVED = re.compile(r"\[unused\d+\]|<unused\d+>")
METRICS = ("l2", "cosine")
Mode = Literal["replace", "append", "prepend", "interleave"]   # where the searched tokens go (Layout)
MODES: tuple[str, ...] = get_args(Mode)


def token_ids(encoder: TextEncoder, kind: str = "words") -> torch.Tensor:
    """Searchable ids ``[V']``: whole-word tokens (``kind="words"``) or all non-special tokens (``"all"``)."""
    if kind not in KINDS:
        raise AmsmoothError(f"unknown vocabulary kind {kind!r}; known: {', '.join(KINDS)}")
    key = json.dumps([encoder.fingerprint(), type(encoder.tokenizer).__name__, len(encoder.tokenizer), kind],
                     sort_keys=True)
    if key not in _IDS:
        _IDS[key] = _scan(encoder, kind)
    return _IDS[key]


def word_token_ids(encoder: TextEncoder) -> torch.Tensor:
    """Ids of the non-special tokens whose decoded text re-tokenizes to exactly that token: ``[V']``."""
    return token_ids(encoder, "words")


def excluded_ids(tokenizer) -> set[int]:  # noqa: ANN001 - a transformers tokenizer
    """Ids no attack may search: special tokens, added tokens and reserved slots (``RESERVED``)."""
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return ({*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder}
            | {i for i, name in enumerate(names) if name and RESERVED.fullmatch(name)})


def _scan(encoder: TextEncoder, kind: str) -> torch.Tensor:
    tok = encoder.tokenizer
    size = int(encoder.embedding.weight.shape[0])
    ids = list(range(min(size, len(tok))))
    special = excluded_ids(tok)
    if kind == "all":
        kept = [i for i in ids if i not in special]
    else:
        back = tok(tok.batch_decode([[i] for i in ids]), add_special_tokens=False)["input_ids"]
        kept = [i for i, b in zip(ids, back, strict=True) if b == [i] and i not in special]
    if not kept:
        raise AmsmoothError(f"{encoder.name}: no searchable token in the vocabulary ({kind})")
    return torch.tensor(kept, dtype=torch.long)


class Vocabulary:
    """Searchable token ids and their embeddings, random draws and projection onto real tokens (L2 or cosine)."""

    def __init__(self, encoder: TextEncoder, ids: torch.Tensor | None = None, kind: str = "words",
                 exclude: Sequence[int] = ()) -> None:
        self.encoder, self.kind = encoder, kind
        ids = token_ids(encoder, kind) if ids is None else ids.long()
        if exclude:
            drop = torch.tensor(sorted(set(int(i) for i in exclude)), dtype=torch.long)
            ids = ids[~torch.isin(ids, drop)]
            if ids.numel() == 0:
                raise AmsmoothError("every token of the vocabulary was excluded")
        self.ids = ids
        weight = encoder.embedding.weight.detach()
        self.embeddings = weight[self.ids.to(weight.device)].float()    # [V', D]
        self._sq_norms = (self.embeddings ** 2).sum(1)                   # [V']
        self._unit = self.embeddings / self.embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
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

    def project(self, points: torch.Tensor, metric: str = "l2") -> torch.Tensor:
        """Nearest searchable token of each row of ``points`` ``[K, D]`` → ids ``[K]`` (CPU), in L2 or cosine."""
        p = points.detach().float().to(self.embeddings.device)
        if metric == "cosine":                  # P4D / PEZ: max cos(e_v, p)
            score = -(p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ self._unit.T
        elif metric == "l2":                    # ||e_v||² − 2⟨e_v, p⟩ (+ ||p||², constant)
            score = self._sq_norms[None, :] - 2 * p @ self.embeddings.T
        else:
            raise AmsmoothError(f"unknown projection metric {metric!r}; known: {', '.join(METRICS)}")
        return self.ids[score.argmin(1).cpu()]

    def positions_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Index into this vocabulary of each token id ``[K]`` → ``[K]`` (ids must be searchable)."""
        lookup = {int(t): i for i, t in enumerate(self.ids.tolist())}
        return torch.tensor([lookup[int(t)] for t in ids.tolist()], dtype=torch.long)


@dataclass(frozen=True)
class Layout:
    """Where the K searched tokens go: ``replace``, ``append``, ``prepend`` or ``interleave`` (one searched token
    before every ``every`` source tokens and one at the end, as P4D-K's ``every_k``)."""

    mode: str = "replace"
    every: int = 3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AmsmoothError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if not isinstance(self.every, int) or self.every < 1:
            raise AmsmoothError(f"every must be an integer >= 1, got {self.every}")

    def count(self, n_source: int, tokens: int) -> int:
        """K for a source of ``n_source`` tokens: ``tokens``, or n // every + 1 when interleaving (P4D-K)."""
        return n_source // self.every + 1 if self.mode == "interleave" else tokens

    def total(self, n_source: int, tokens: int) -> int:
        return (0 if self.mode == "replace" else n_source) + self.count(n_source, tokens)

    def positions(self, n_source: int, k: int) -> list[int]:
        """Content positions of the K searched tokens."""
        if self.mode in ("replace", "prepend"):
            return list(range(k))
        if self.mode == "append":
            return list(range(n_source, n_source + k))
        return [i for i in range(n_source + k) if i % (self.every + 1) == 0][:k]

    def compose(self, source: Sequence[int], adv: Sequence[int]) -> list[int]:
        """The content ids: searched tokens ``adv`` placed among the ``source`` ids."""
        source, adv = list(source), list(adv)
        if self.mode == "replace":
            return adv
        if self.mode == "append":
            return source + adv
        if self.mode == "prepend":
            return adv + source
        pos, s, a = set(self.positions(len(source), len(adv))), iter(source), iter(adv)
        return [next(a) if i in pos else next(s) for i in range(len(source) + len(adv))]


def candidate_batch(encoder: TextEncoder, prefix: TokenizedBatch, suffixes: Sequence[Sequence[int]],
                    prepend: bool = False, layout: Layout | None = None) -> TokenizedBatch:
    """Prompts made of the kept source tokens (``prefix``, a one-prompt tokenization, possibly empty) and each
    candidate's searched tokens placed by ``layout`` (default: appended, or prepended when ``prepend``), as a batch
    ``[B, L]`` built from ids (no re-tokenizing). Each searched token is its own word; the source tokens keep
    their word grouping.
    """
    layout = layout or Layout("prepend" if prepend else "append")
    start = encoder.content_start
    base = [] if layout.mode == "replace" else list(prefix.content_ids[0])
    base_words = prefix.word_index[0, start:start + len(base)].tolist()
    adv = [[int(t) for t in s] for s in suffixes]
    contents = [layout.compose(base, a) for a in adv]
    if any(len(c) > encoder.max_content for c in contents):
        raise AmsmoothError(f"candidate longer than the encoder's {encoder.max_content} prompt tokens")
    input_ids, mask = encoder.build_ids(contents)
    B, L = len(contents), encoder.max_length
    content_mask = torch.zeros(B, L, dtype=torch.bool)
    word_index = torch.full((B, L), -1, dtype=torch.long)
    for b, (c, a) in enumerate(zip(contents, adv, strict=True)):
        content_mask[b, start:start + len(c)] = True
        adv_pos = set(layout.positions(len(base), len(a)))
        w, last, src = -1, None, iter(base_words)
        for i in range(len(c)):
            if i in adv_pos:
                w, last = w + 1, None
            else:
                sw = next(src)
                if sw != last:
                    w, last = w + 1, sw
            word_index[b, start + i] = w
    tokens = [encoder.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
    texts = [encoder.tokenizer.decode(c) for c in contents]
    return TokenizedBatch(texts, input_ids, mask, content_mask, word_index, tokens, contents, [""] * B)
