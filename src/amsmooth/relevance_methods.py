"""Relevance methods behind one signature, chosen by name (``SmoothingConfig.relevance``).

Each method is a pure function ``fn(ctx, batch) -> RawScores`` (k-diffusion style: the sampler is chosen by
name, every sampler takes the same arguments): ``ctx`` holds the encoder, the concept directions Δ_c
``[C, L, D]``, the config and the per-word cache; the result is each prompt token's raw score per concept,
``[B, L, C]`` (0 at special tokens). ``algorithm1`` is the paper's, unchanged; the others are put on the
calibrated scale of :mod:`amsmooth.relevance_scale` by ``AdaptiveMedianSmoothing``. docs/method.md cites what
each follows.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .concepts import BUILTIN, Concept, builtin_pairs_path, read_pairs
from .config import RELEVANCE_METHODS, SmoothingConfig
from .encoders import PromptsTruncated, TextEncoder, TokenizedBatch
from .errors import AmsmoothError
from .relevance import WordCache, combine_global, concept_cosine, differential_embeddings, removals
from .relevance_scale import neutral_words


@dataclass
class RelevanceContext:
    """What every method reads: the encoder, the concepts and their directions ``[C, L, D]`` (on the encoder's
    device), the config, the per-word cache, and ``state``: data a method prepares once (e.g. subspace bases)."""

    encoder: TextEncoder
    concepts: Sequence[Concept]
    directions: torch.Tensor
    config: SmoothingConfig
    cache: WordCache
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawScores:
    """A method's scores ``[B, L, C]``: ``local`` (the score), ``glob`` (Algorithm 1's global part, else None)."""

    local: torch.Tensor
    glob: torch.Tensor | None = None


MethodFn = Callable[[RelevanceContext, TokenizedBatch], RawScores]


@dataclass(frozen=True)
class Method:
    """A relevance method: its function, a one-line summary, the work it follows, whether its scores are
    calibrated (:mod:`amsmooth.relevance_scale`), and what σ is a function of (``certify`` reports Theorem 3.2's
    bound only when σ is constant over the perturbations it covers: embedding changes at fixed token ids)."""

    name: str
    fn: MethodFn
    summary: str
    follows: str
    calibrated: bool = True
    sigma_reads: str = "token ids"


# ---------------------------------------------------------------------------------------------- Algorithm 1
def _word_requests(ctx: RelevanceContext, batch: TokenizedBatch, tag: str,
                   ) -> tuple[dict[tuple, list[tuple]], dict[tuple, torch.Tensor]]:
    """Uncached words (key → its removal sequences) and the cached words' values (held here, so caching this
    batch's new words cannot evict them mid-batch). ``tag`` keeps each method's cache entries apart."""
    words: dict[tuple, list[tuple]] = {}
    known: dict[tuple, torch.Tensor] = {}
    for b in range(len(batch)):
        for pos in batch.words(b):
            key = tuple(batch.input_ids[b, pos].tolist())
            if key in words or key in known:
                continue
            cached = ctx.cache.get(key if not tag else (tag, key))
            if cached is None:
                words[key] = removals(key)
            else:
                known[key] = cached
    return words, known


def encode_sequences(ctx: RelevanceContext, seqs: list[tuple]) -> dict[tuple, torch.Tensor]:
    """All requested sequences in one batched encoder call (chunked only past max_batch)."""
    if not seqs:
        return {}
    ids, mask = ctx.encoder.build_ids(seqs)
    emb = ctx.encoder.encode_chunked(ids, mask, ctx.config.max_batch)
    return {s: emb[i] for i, s in enumerate(seqs)}


def removal_diffs(emb: dict[tuple, torch.Tensor], ids: tuple) -> torch.Tensor:
    """DiffEmbed(ids, j) for every token j of ``ids``: ``[len(ids), L, D]``."""
    rs = removals(ids)
    return differential_embeddings(emb[rs[0]], torch.stack([emb[r] for r in rs[1:]]))


def _place_words(batch: TokenizedBatch, known: dict[tuple, torch.Tensor], C: int, L: int) -> torch.Tensor:
    """Per-word values ``[len(word), C]`` put at the word's positions: ``[B, L, C]``."""
    local = torch.zeros(len(batch), L, C)
    for b in range(len(batch)):
        for pos in batch.words(b):
            local[b, pos] = known[tuple(batch.input_ids[b, pos].tolist())]
    return local


def algorithm1(ctx: RelevanceContext, batch: TokenizedBatch) -> RawScores:
    """The paper's Algorithm 1: local sim_j = cos(DiffEmbed(w, j), Δ_c) of each word encoded alone (cached per
    word), and with ``use_global`` the same over the whole prompt; the sequences are encoded in one call."""
    words, known = _word_requests(ctx, batch, "")
    seqs = [s for rs in words.values() for s in rs]
    if ctx.config.use_global:
        seqs += [s for ids in batch.content_ids for s in removals(ids)]
    emb = encode_sequences(ctx, list(dict.fromkeys(seqs)))
    fresh = {key: concept_cosine(removal_diffs(emb, key), ctx.directions).cpu() for key in words}
    for key, value in fresh.items():
        ctx.cache.put(key, value)
    known.update(fresh)
    B, L, C = len(batch), ctx.encoder.max_length, ctx.directions.shape[0]
    local = _place_words(batch, known, C, L)
    glob = torch.zeros(B, L, C) if ctx.config.use_global else None
    if glob is not None:
        for b in range(B):
            if batch.content_ids[b]:
                start = int(batch.content_mask[b].nonzero()[0])
                n_tok = len(batch.content_ids[b])
                ids = tuple(batch.content_ids[b])
                glob[b, start:start + n_tok] = concept_cosine(removal_diffs(emb, ids), ctx.directions).cpu()
    return RawScores(local, glob)


# ---------------------------------------------------------------------------------------------- contextual
def fill_id(encoder: TextEncoder) -> int:
    """The id that stands in for a masked token: the tokenizer's mask token (BERT), else its padding (CLIP)."""
    mask = getattr(encoder.tokenizer, "mask_token_id", None)
    return int(mask) if mask is not None else encoder.pad_id


def contextual(ctx: RelevanceContext, batch: TokenizedBatch) -> RawScores:
    """Each token's masked (leave-one-out) effect on the prompt's own encoding, on the concept direction:
    s_j = cos(T(y) − T(y with token j masked), Δ_c), over the flattened ``[L, D]``.

    Masking (not removal) keeps every other token at its position, so the difference is the token's effect in
    context, not a shift of the sequence. One batched call: each prompt and one row per prompt token; a prompt's
    scores are cached under its token ids."""
    B, L, C = len(batch), ctx.encoder.max_length, ctx.directions.shape[0]
    out = torch.zeros(B, L, C)
    todo: dict[tuple, int] = {}
    for b in range(B):
        key = ("contextual", tuple(batch.input_ids[b].tolist()))
        cached = ctx.cache.get(key)
        if cached is not None:
            out[b] = cached
        elif key not in todo:
            todo[key] = b
    if todo:
        fill = fill_id(ctx.encoder)
        rows, masks, owner = [], [], []
        for key, b in todo.items():
            positions = batch.content_mask[b].nonzero().flatten().tolist()
            rows.append(batch.input_ids[b])
            masks.append(batch.attention_mask[b])
            for p in positions:
                ids = batch.input_ids[b].clone()
                ids[p] = fill
                rows.append(ids)
                masks.append(batch.attention_mask[b])
            owner.append((key, b, positions))
        emb = ctx.encoder.encode_chunked(torch.stack(rows), torch.stack(masks), ctx.config.max_batch)
        r = 0
        for key, b, positions in owner:
            full, masked = emb[r], emb[r + 1:r + 1 + len(positions)]
            r += 1 + len(positions)
            value = torch.zeros(L, C)
            if positions:
                value[positions] = concept_cosine(differential_embeddings(full, masked), ctx.directions).cpu()
            ctx.cache.put(key, value)
            out[b] = value
    for b in range(B):                       # duplicates of a prompt computed in this batch
        key = ("contextual", tuple(batch.input_ids[b].tolist()))
        if key in todo and todo[key] != b:
            out[b] = out[todo[key]]
    return RawScores(out)


# ---------------------------------------------------------------------------------------------- attribution
def attribution(ctx: RelevanceContext, batch: TokenizedBatch) -> RawScores:
    """Gradient × input of the concept score: f_c(y) = cos(T(y), Δ_c) over the flattened ``[L, D]``, and
    s_j = ⟨∂f_c/∂e_j, e_j − e_fill⟩ for token embedding e_j against the masked token's embedding e_fill — the
    first-order estimate of what masking token j does to f_c. One forward and one backward pass per concept."""
    enc = ctx.encoder
    B, L, C = len(batch), enc.max_length, ctx.directions.shape[0]
    out = torch.zeros(B, L, C)
    weight = enc.embedding.weight.detach()
    fill = weight[fill_id(enc)].float()
    step = max(1, ctx.config.max_batch)
    for s in range(0, B, step):
        ids, mask = batch.input_ids[s:s + step], batch.attention_mask[s:s + step]
        e = weight[ids.to(weight.device)].float()
        with torch.enable_grad():
            z = torch.zeros(e.shape, device=e.device, requires_grad=True)
            h = enc.encode_ids(ids, mask, z).float().flatten(1)
            f = torch.nn.functional.normalize(h, dim=1) @ torch.nn.functional.normalize(
                ctx.directions.flatten(1).float().to(h.device), dim=1).T               # [b, C]
            for c in range(C):
                (g,) = torch.autograd.grad(f[:, c].sum(), z, retain_graph=c < C - 1)
                out[s:s + step, :, c] = (g * (e - fill)).sum(-1).detach().cpu()
    return RawScores(out * batch.content_mask[..., None])


# ---------------------------------------------------------------------------------------------- subspace
STOPWORDS = frozenset("a an the of in on at by to for from with and or but is are was were be been being it its "
                      "his her their our your my this that these those as into onto over under while who whom "
                      "which what where when he she they we you i him them not no".split())
SUBSPACE_WORDS = 16       # concept words mined from the pairs that span the subspace (with Δ itself)
MIN_PAIRS = 2             # a candidate word appears in at least this many positive prompts and no negative one


def candidate_words(positives: Sequence[str], negatives: Sequence[str], min_pairs: int = MIN_PAIRS) -> list[str]:
    """Words of the positive prompts that no negative prompt has, in at least ``min_pairs`` positives (stop
    words dropped), most frequent first (ties alphabetical)."""
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower())) - STOPWORDS

    neg = set().union(*(words(t) for t in negatives)) if negatives else set()
    counts: dict[str, int] = {}
    for t in positives:
        for w in words(t) - neg:
            counts[w] = counts.get(w, 0) + 1
    return sorted((w for w, n in counts.items() if n >= min_pairs), key=lambda w: (-counts[w], w))


def concept_pairs(concept: Concept, method_name: str = "subspace") -> tuple[list[str], list[str]]:
    """The pairs a concept was built from: a built-in concept's shipped CSV (checked by its SHA-256); a
    concept without them is refused, naming the relevance method (``method_name``) that needs them."""
    if concept.name in BUILTIN:
        pos, neg, digest = read_pairs(builtin_pairs_path(concept.name))
        if not concept.pairs_sha256 or digest == concept.pairs_sha256:
            return pos, neg
    raise AmsmoothError(f"relevance '{method_name}' mines the concept's words from its pairs, and concept "
                        f"'{concept.name}' is not a built-in one whose pairs ship with amsmooth; use a built-in "
                        "concept (nudity, violence, vangogh) or another --relevance")


def whole_word_diffs(ctx: RelevanceContext, words: Sequence[str]) -> torch.Tensor:
    """T(w) − T(∅) for each word w encoded alone (∅: no prompt token): ``[len(words), L, D]`` (float32)."""
    ids = [ctx.encoder.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    emb = encode_sequences(ctx, [(), *[tuple(i) for i in ids]])
    empty = emb[()].float()
    return torch.stack([emb[tuple(i)].float() - empty for i in ids])


def subspace_basis(ctx: RelevanceContext, concept: Concept, direction: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows ``[r, L·D]`` spanning Δ_c and the directions of the concept's words: the
    ``SUBSPACE_WORDS`` candidate words of its pairs (:func:`candidate_words`) that the encoder itself aligns
    best with Δ_c (cosine of T(w) − T(∅) with Δ_c), each as T(w) − T(∅) minus its part along the mean word
    direction of the neutral prompts' words (what any word adds)."""
    pos, neg = concept_pairs(concept)
    cands = candidate_words(pos, neg)
    if not cands:
        raise AmsmoothError(f"concept '{concept.name}': its pairs have no word of their own for 'subspace'")
    diffs = whole_word_diffs(ctx, cands).flatten(1)
    d = direction.flatten().float().to(diffs.device)
    order = torch.argsort(concept_cosine(diffs[:, None], d[None, None]).flatten(), descending=True, stable=True)
    chosen = diffs[order[:SUBSPACE_WORDS]]
    generic = torch.nn.functional.normalize(whole_word_diffs(ctx, neutral_words(ctx.encoder)).flatten(1).mean(0),
                                            dim=0)
    chosen = chosen - (chosen @ generic)[:, None] * generic[None]
    q, r = torch.linalg.qr(torch.cat([d[None], chosen]).T.double())
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()
    return q.T[keep].float()


def subspace(ctx: RelevanceContext, batch: TokenizedBatch) -> RawScores:
    """Norm of the projection of each token's local DiffEmbed (Algorithm 1's, the word encoded alone) on the
    concept's subspace, as a fraction of its norm: s_j = ||Q_c d_j|| / ||d_j|| ∈ [0, 1] (SAFREE's proximity to a
    toxic subspace, per token). Cached per word like Algorithm 1."""
    bases = ctx.state.get("subspace")
    if bases is None:
        bases = ctx.state["subspace"] = [subspace_basis(ctx, c, ctx.directions[i].cpu())
                                         for i, c in enumerate(ctx.concepts)]
    words, known = _word_requests(ctx, batch, "subspace")
    emb = encode_sequences(ctx, list(dict.fromkeys(s for rs in words.values() for s in rs)))
    for key in words:
        d = removal_diffs(emb, key).flatten(1).float().cpu()
        norm = d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        value = torch.stack([((d @ q.T).norm(dim=1, keepdim=True) / norm).flatten() for q in bases], dim=1)
        ctx.cache.put(("subspace", key), value)
        known[key] = value
    return RawScores(_place_words(batch, known, len(bases), ctx.encoder.max_length))


# ---------------------------------------------------------------------------------------------- proximity
PROXIMITY_WORDS = 16      # concept words (mined like subspace's) a word is compared with, besides Δ pooled


def pooled(encoder: TextEncoder, hidden: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The sentence embedding the encoder family compares: ``[N, L, D]`` hidden states and the ``[N, L]`` prompt
    token mask → ``[N, D]`` (float32). CLIP: the end-of-text token's state (CLIPTextModel's pooled output, right
    after the prompt tokens); any other family: the mean over the prompt tokens (sentence-transformers' mean
    pooling, with which all-MiniLM-L6-v2 was trained, without the special tokens; a row without prompt tokens
    gives 0)."""
    hidden, content = hidden.float(), content.to(hidden.device)
    if encoder.is_clip:
        eos = encoder.content_start + content.sum(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
    m = content[..., None].float()
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def pooled_sequences(ctx: RelevanceContext, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Pooled embeddings of token-id sequences, each encoded alone between the special tokens: ``[N, D]``."""
    enc = ctx.encoder
    ids, mask = enc.build_ids(seqs)
    content = torch.zeros_like(mask, dtype=torch.bool)
    for r, seq in enumerate(seqs):
        content[r, enc.content_start:enc.content_start + min(len(seq), enc.max_content)] = True
    return pooled(enc, enc.encode_chunked(ids, mask, ctx.config.max_batch), content).cpu()


def pooled_words(ctx: RelevanceContext, words: Sequence[str]) -> torch.Tensor:
    """Pooled embeddings of words, each encoded alone: ``[len(words), D]``."""
    return pooled_sequences(ctx, [ctx.encoder.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words])


def pooled_prompts(ctx: RelevanceContext, prompts: Sequence[str]) -> torch.Tensor:
    """Pooled embeddings of prompts as the pipeline tokenizes them (truncated to L, silently: the concept's
    pairs are cut as its direction's are): ``[N, D]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptsTruncated)
        batch = ctx.encoder.tokenize(list(prompts))
    emb = ctx.encoder.encode_chunked(batch.input_ids, batch.attention_mask, ctx.config.max_batch)
    return pooled(ctx.encoder, emb, batch.content_mask).cpu()


def proximity_anchors(ctx: RelevanceContext, concept: Concept) -> tuple[torch.Tensor, torch.Tensor]:
    """(the centre ``[D]``, unit anchor directions ``[1 + r, D]``) of one concept. The centre is what any word
    adds: the mean pooled embedding of the neutral prompts' words, each encoded alone. The anchors: the pooled
    direction Δ_c^pool = mean over the concept's pairs of P(positive) − P(negative), then the
    ``PROXIMITY_WORDS`` candidate words of its pairs (:func:`candidate_words`) whose P(w) − centre is most
    aligned with Δ_c^pool, each as P(w) − centre."""
    pos, neg = concept_pairs(concept, "proximity")
    cands = candidate_words(pos, neg)
    if not cands:
        raise AmsmoothError(f"concept '{concept.name}': its pairs have no word of their own for 'proximity'")
    centre = ctx.state.get("proximity_centre")
    if centre is None:
        centre = ctx.state["proximity_centre"] = pooled_words(ctx, neutral_words(ctx.encoder)).mean(0)
    d = torch.nn.functional.normalize((pooled_prompts(ctx, pos) - pooled_prompts(ctx, neg)).mean(0), dim=0)
    words = torch.nn.functional.normalize(pooled_words(ctx, cands) - centre, dim=1)
    order = torch.argsort(words @ d, descending=True, stable=True)
    return centre, torch.cat([d[None], words[order[:PROXIMITY_WORDS]]])


def proximity(ctx: RelevanceContext, batch: TokenizedBatch) -> RawScores:
    """Each word's proximity to the concept in the encoder's own sentence-embedding space: the word encoded
    alone, pooled (:func:`pooled`), minus the centre (what any word adds), and its highest cosine with the
    concept's anchors (:func:`proximity_anchors`: Δ_c pooled and the concept's own words):
    s_w = max_a cos(P(w) − P̄_neutral, a), every token of w getting s_w. Cached per word like Algorithm 1; one
    encoder row per uncached word."""
    anchors = ctx.state.get("proximity")
    if anchors is None:
        anchors = ctx.state["proximity"] = [proximity_anchors(ctx, c) for c in ctx.concepts]
    words, known = _word_requests(ctx, batch, "proximity")
    if words:
        vec = pooled_sequences(ctx, list(words))                                   # [W, D]
        for i, key in enumerate(words):
            value = torch.stack([(torch.nn.functional.normalize(vec[i] - centre, dim=0) @ a.T).max()
                                 for centre, a in anchors])                        # [C]
            value = value[None].expand(len(key), -1).clone()                       # [len(word), C]
            ctx.cache.put(("proximity", key), value)
            known[key] = value
    return RawScores(_place_words(batch, known, len(anchors), ctx.encoder.max_length))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("algorithm1", algorithm1, "cos(T(w) − T(w∖j), Δ) of each word encoded alone (+ global if asked)",
           "Han et al., ICML 2025, Sec. 3.4 and Algorithm 1", calibrated=False),
    Method("contextual", contextual, "cos(T(y) − T(y with token j masked), Δ): the token's effect in context",
           "occlusion / leave-one-out attribution (Zeiler & Fergus 2014; Li et al. 2016 'Understanding neural "
           "networks through representation erasure'); SAFREE's masked-token proximity (Yoon et al., ICLR 2025)"),
    Method("attribution", attribution, "⟨∂cos(T(y), Δ)/∂e_j, e_j − e_mask⟩: gradient × input, one backward",
           "gradient × input (Shrikumar et al. 2016; Ancona et al., ICLR 2018), one-step integrated gradients "
           "with the mask token as baseline (Sundararajan et al., ICML 2017)"),
    Method("subspace", subspace, "||projection of DiffEmbed(w, j) on span(Δ, concept words)|| / ||DiffEmbed||",
           "SAFREE's toxic-concept subspace (Yoon et al., ICLR 2025, Sec. 3.1), spanned by Δ and the pairs' own "
           "words"),
    Method("proximity", proximity, "max cos(P(w) − P̄, Δ pooled or a concept word's): the word's proximity "
           "to the concept in the encoder's pooled (sentence-embedding) space",
           "sentence-embedding similarity (Reimers & Gurevych, EMNLP 2019: mean pooling; CLIP's pooled "
           "end-of-text state, Radford et al., ICML 2021); SAFREE's keyword proximity (Yoon et al., ICLR 2025)"),
)}
assert tuple(METHODS) == RELEVANCE_METHODS, "config.RELEVANCE_METHODS must list METHODS in order"


def method(name: str) -> Method:
    """The method called ``name``; unknown names list the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise AmsmoothError(f"unknown relevance method {name!r}; known: {', '.join(METHODS)}") from None


def word_max(scores: torch.Tensor, batch: TokenizedBatch) -> torch.Tensor:
    """Every token of a word gets the word's highest score (per concept): ``[B, L, C]`` → ``[B, L, C]``. The noise
    unit is the word: a synonym split into word pieces ("dis", "##ro", "##bed") is noised as a whole."""
    out = scores.clone()
    for b in range(len(batch)):
        for positions in batch.words(b):
            out[b, positions] = scores[b, positions].max(0).values
    return out


def combine(raw: RawScores) -> torch.Tensor:
    """Algorithm 1's combination of local and global (if any): ``[B, L, C]``."""
    return raw.local if raw.glob is None else combine_global(raw.local, raw.glob)
