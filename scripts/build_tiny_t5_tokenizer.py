"""Build the tiny T5-style tokenizer shipped in src/amsmooth/data/tiny-t5-tokenizer (run once; output is committed).

No T5 SentencePiece model is available offline, so this builds a small *fast* tokenizer with the real T5's
structure — Unigram model, Metaspace pre-tokenizer (``▁``), ``<pad>``=0 ``</s>``=1 ``<unk>``=2, ``</s>`` appended —
from a word list: the whole words and subword pieces of the shipped CLIP BPE vocabulary (lower case, so the
normalizer lower-cases; the real T5 does not) and single characters, 16,384 pieces in all.
"""
from __future__ import annotations

import json
import string
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB = 16384
ROOT = Path(__file__).resolve().parents[1] / "src" / "amsmooth" / "data"


def pieces() -> list[str]:
    clip = json.loads((ROOT / "tiny" / "tokenizer" / "vocab.json").read_text())
    ordered = sorted(clip, key=clip.get)
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    out = ["▁" + c for c in chars] + chars + ["▁"]
    seen = set(out)
    for tok in ordered:
        word = tok[:-4] if tok.endswith("</w>") else tok
        if not word.isascii() or not word.isprintable() or not word.strip():
            continue
        piece = "▁" + word if tok.endswith("</w>") else word
        capital = ["▁" + word.capitalize()] if tok.endswith("</w>") and len(out) < 6000 else []
        for p in [piece, *capital]:
            if p not in seen:
                seen.add(p)
                out.append(p)
        if len(out) >= VOCAB - 3:
            break
    return out


def _score(piece: str, rank: int) -> float:
    """Log-probability-like score: whole words beat subwords beat single characters, so common words stay one
    piece; within a kind, earlier (more frequent in CLIP's merges) pieces win."""
    base = -15.0 if len(piece.lstrip("▁")) <= 1 else (-1.0 if piece.startswith("▁") else -5.0)
    return base - 1e-4 * rank


def build() -> Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, _score(p, i)) for i, p in enumerate(pieces())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok


def main(out: Path = ROOT / "tiny-t5-tokenizer") -> None:
    out.mkdir(parents=True, exist_ok=True)
    build().save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "extra_ids": 0, "additional_special_tokens": []}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
