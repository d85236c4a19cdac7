"""Concept directions Δ_tgt = mean_k (T(y+_k) − T(y−_k)) from positive/negative prompt pairs (Sec. 3.4)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch

from .encoders import TextEncoder, one_truncation_warning
from .errors import AmsmoothError
from .io import atomic_write_bytes, cache_dir
from .prompts import read_csv

T = TypeVar("T")

# Column pairs recognised when none are given: (positive, negative).
KNOWN_COLUMNS = [("sensitive prompt", "normal prompt"), ("prompt", "prompt1"), ("positive", "negative")]
BUILTIN = {"nudity": "nudity_pairs.csv", "violence": "violence_pairs.csv", "vangogh": "vangogh_pairs.csv"}
FORMAT = "amsmooth-concept-v1"


def builtin_pairs_path(name: str) -> Path:
    """Path of a shipped pairs CSV (nudity, violence, vangogh)."""
    return Path(str(resources.files("amsmooth") / "data" / "concepts" / BUILTIN[name]))


def read_pairs(path: str | Path, positive_column: str | None = None,
               negative_column: str | None = None) -> tuple[list[str], list[str], str]:
    """(positives, negatives, sha256 of the file) from a pairs CSV; clear errors for every bad input."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")   # a BOM (Excel) is not part of the header
    except FileNotFoundError:
        raise AmsmoothError(f"pairs file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read pairs file {path}: {e}") from None
    header, rows = read_csv(text, str(path))
    if (positive_column is None) != (negative_column is None):
        raise AmsmoothError("give both --positive-column and --negative-column, or neither (auto-detect)")
    if positive_column is None and negative_column is None:
        found = [c for c in KNOWN_COLUMNS if c[0] in header and c[1] in header]
        if not found:
            raise AmsmoothError(f"{path}: cannot tell the positive/negative columns "
                                f"(found: {', '.join(header) or 'none'}); pass --positive-column and --negative-column")
        positive_column, negative_column = found[0]
    for col in (positive_column, negative_column):
        if col not in header:
            raise AmsmoothError(f"{path}: missing column {col!r} (found: {', '.join(header) or 'none'})")
    pos = [(r[positive_column] or "").strip() for _, r in rows]
    neg = [(r[negative_column] or "").strip() for _, r in rows]
    if not pos:
        raise AmsmoothError(f"{path}: no prompt pairs (the CSV is empty)")
    for (line, _), p, n in zip(rows, pos, neg, strict=True):
        if not p or not n:
            side = positive_column if not p else negative_column
            raise AmsmoothError(f"{path}: line {line}: the {side!r} prompt of this pair is empty; every pair needs "
                                "both prompts (or delete the row)")
    return pos, neg, hashlib.sha256(raw).hexdigest()


def concept_direction(encoder: TextEncoder, positives: list[str], negatives: list[str],
                      batch_size: int = 32) -> torch.Tensor:
    """Δ_tgt ``[L, D]`` (float32): the mean of T(pos) − T(neg), prompts padded to L as at inference."""
    total = None
    with one_truncation_warning():
        for s in range(0, len(positives), batch_size):
            emb = encoder.encode(positives[s:s + batch_size] + negatives[s:s + batch_size]).float()
            half = emb.shape[0] // 2
            diff = (emb[:half] - emb[half:]).sum(0)
            total = diff if total is None else total + diff
    return (total / len(positives)).cpu()


def _describe(fp: dict) -> str:
    return (f"{fp.get('model_type')} (hidden {fp.get('hidden_size')}, length {fp.get('max_length')}, "
            f"vocab {fp.get('vocab_size')}, weights {fp.get('weights_sha256', fp.get('embedding_sha256'))})")


def read_concept_file(path: Path, read: Callable[[dict[str, str], Any], T]) -> T:
    """``read(metadata, handle)`` on the safetensors file at ``path``: a missing file, or any failure to decode it
    (other than an ``AmsmoothError`` of ``read``'s own), is a one-line ``AmsmoothError``."""
    from safetensors import safe_open

    if not path.is_file():
        raise AmsmoothError(f"concept file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return read(f.metadata() or {}, f)
    except AmsmoothError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupted file to the user
        raise AmsmoothError(f"{path} is not a valid amsmooth concept file ({type(e).__name__}: {e})"
                            .splitlines()[0]) from None


def direction_problem(direction: Any) -> str | None:
    """Why ``direction`` cannot be a concept direction Δ_tgt ``[L, D]``, or None: it must be a 2-D float tensor
    of finite values, not all zero (a NaN direction gives NaN similarities, hence NaN σ and black images; a zero
    one gives every token the same noise, i.e. no concept at all)."""
    if not isinstance(direction, torch.Tensor) or not direction.is_floating_point():
        return "its direction is not a float tensor"
    if direction.ndim != 2 or 0 in direction.shape:
        return f"its direction has shape {tuple(direction.shape)}, not [L, D]"
    if not bool(torch.isfinite(direction).all()):
        bad = int((~torch.isfinite(direction)).sum())
        return f"its direction has {bad} NaN or infinite value(s)"
    if not bool((direction != 0).any()):
        return ("its direction is all zeros (the positive and negative prompts encode alike), so no token would be "
                "more relevant than another")
    return None


def is_concept_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file that amsmooth wrote as a concept (or a multi-encoder bundle)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format", "").startswith("amsmooth-concept")
    except Exception:  # noqa: BLE001 - anything that does not decode is not ours
        return False


@dataclass
class Concept:
    """A target concept: its direction ``[L, D]`` and the identity of the encoder it was built with."""

    name: str
    direction: torch.Tensor
    fingerprint: dict
    pairs_sha256: str = ""
    pairs_count: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = direction_problem(self.direction)
        if problem:
            raise AmsmoothError(f"concept '{self.name}': {problem}; rebuild it with `amsmooth concept build` "
                                "from pairs that differ in the concept")

    @classmethod
    def from_pairs(cls, encoder: TextEncoder, path: str | Path, *, name: str | None = None,
                   positive_column: str | None = None, negative_column: str | None = None,
                   batch_size: int = 32) -> Concept:
        """Compute Δ_tgt from a pairs CSV with this encoder."""
        pos, neg, digest = read_pairs(path, positive_column, negative_column)
        with torch.no_grad():
            direction = concept_direction(encoder, pos, neg, batch_size)
        return cls(name or Path(path).stem.removesuffix("_pairs"), direction, encoder.fingerprint(), digest,
                   len(pos))

    def check_encoder(self, encoder: TextEncoder) -> None:
        """Refuse a concept built for another encoder, naming both."""
        if self.fingerprint != encoder.fingerprint():
            raise AmsmoothError(f"concept '{self.name}' was built for {_describe(self.fingerprint)}, but the "
                                f"encoder in use is {_describe(encoder.fingerprint())}; rebuild it with "
                                "`amsmooth concept build --encoder …`")
        want = tuple(encoder.direction_shape)
        if tuple(self.direction.shape) != want:
            raise AmsmoothError(f"concept '{self.name}': its direction has shape {tuple(self.direction.shape)}, but "
                                f"the encoder's outputs are {list(want)} (the file was edited or damaged); rebuild "
                                "it with `amsmooth concept build --encoder …`")

    def save(self, path: str | Path) -> None:
        """Write safetensors (tensor ``direction``) with the fingerprint and pairs provenance as metadata."""
        from safetensors.torch import save

        path = Path(path)
        meta = {"format": FORMAT, "name": self.name, "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "pairs_sha256": self.pairs_sha256, "pairs_count": str(self.pairs_count)}
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temp file per process: several processes (accelerate shards) may cache the same concept at once
        atomic_write_bytes(path, save({"direction": self.direction.float().contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, encoder: TextEncoder | None = None) -> Concept:
        """Read a saved concept; with ``encoder``, check it was built for that encoder."""
        def read(meta: dict[str, str], f: Any) -> tuple[dict[str, str], torch.Tensor, Any]:
            direction = f.get_tensor("direction")
            fingerprint = json.loads(meta["fingerprint"])
            if meta.get("format") != FORMAT:
                raise KeyError("format")
            problem = direction_problem(direction)
            if problem:
                raise AmsmoothError(f"{path}: {problem}; the file is damaged: rebuild it with "
                                    "`amsmooth concept build`")
            return meta, direction, fingerprint

        path = Path(path)
        meta, direction, fingerprint = read_concept_file(path, read)
        concept = cls(meta.get("name", path.stem), direction, fingerprint, meta.get("pairs_sha256", ""),
                      int(meta.get("pairs_count", 0) or 0))
        if encoder is not None:
            concept.check_encoder(encoder)
        return concept

    @classmethod
    def builtin(cls, name: str, encoder: TextEncoder) -> Concept:
        """A shipped concept (nudity, violence, vangogh), built for ``encoder`` on first use and cached."""
        if name not in BUILTIN:
            raise AmsmoothError(f"unknown concept {name!r}; built-in: {', '.join(BUILTIN)}, or a .safetensors path")
        fp = encoder.fingerprint()
        key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
        cached = cache_dir() / "concepts" / f"{name}-{key}.safetensors"
        if cached.is_file():
            try:
                return cls.load(cached, encoder)
            except AmsmoothError:
                pass  # a stale or broken cache entry is rebuilt below
        concept = cls.from_pairs(encoder, builtin_pairs_path(name), name=name)
        try:
            concept.save(cached)
        except (OSError, AmsmoothError):   # atomic writes report OS failures as AmsmoothError
            pass  # an unwritable cache only costs a recomputation next time
        return concept


def resolve_concept(spec: str, encoder: TextEncoder) -> Concept:
    """``--concept`` value: a built-in name, or a path to a saved ``.safetensors`` concept."""
    if spec in BUILTIN:
        return Concept.builtin(spec, encoder)
    if spec.endswith(".safetensors") or Path(spec).exists():
        return Concept.load(spec, encoder)
    raise AmsmoothError(f"unknown concept {spec!r}; built-in: {', '.join(BUILTIN)}, or a .safetensors path")
