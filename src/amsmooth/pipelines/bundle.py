"""A concept for a multi-encoder pipeline: one direction Δ_tgt per text encoder, from the same prompt pairs.

Built-in concepts are computed per encoder on first use and cached per encoder fingerprint (as single-encoder
concepts are). A bundle file is one safetensors with a tensor ``direction.<encoder>`` and that encoder's
fingerprint per encoder; a single-encoder concept file fits the one encoder it was built for.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..concepts import BUILTIN, FORMAT, Concept, read_concept_file, read_pairs
from ..errors import AmsmoothError
from ..io import atomic_write_bytes
from .views import EncoderView

BUNDLE_FORMAT = "amsmooth-concept-bundle-v1"


@dataclass
class ConceptBundle:
    """Concepts keyed by encoder name (``clip-l``, ``clip-g``, ``t5`` …), all of one concept."""

    name: str
    concepts: dict[str, Concept]

    @classmethod
    def from_pairs(cls, views: Sequence[EncoderView], path: str | Path, name: str | None = None) -> ConceptBundle:
        """Δ_tgt per encoder from one pairs CSV."""
        read_pairs(path)  # one clear error before any encoding
        concepts = {v.slot.name: Concept.from_pairs(v, path, name=name) for v in views}
        return cls(next(iter(concepts.values())).name, concepts)

    def save(self, path: str | Path) -> None:
        """One safetensors file: ``direction.<encoder>`` tensors, fingerprints and provenance as metadata."""
        from safetensors.torch import save

        first = next(iter(self.concepts.values()))
        meta = {"format": BUNDLE_FORMAT, "name": self.name, "pairs_sha256": first.pairs_sha256,
                "pairs_count": str(first.pairs_count),
                "fingerprints": json.dumps({k: c.fingerprint for k, c in self.concepts.items()}, sort_keys=True)}
        tensors = {f"direction.{k}": c.direction.float().contiguous() for k, c in self.concepts.items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> ConceptBundle:
        """Read a bundle file, or a single-encoder concept file as a bundle of one (keyed ``*``)."""
        path = Path(path)

        def read(meta: dict[str, str], f: Any) -> ConceptBundle:
            name = meta.get("name", path.stem)
            if meta.get("format") == FORMAT:
                return cls(name, {"*": Concept.load(path)})
            if meta.get("format") != BUNDLE_FORMAT:
                raise KeyError("format")
            concepts = {k: Concept(name, f.get_tensor(f"direction.{k}"), fp, meta.get("pairs_sha256", ""),
                                   int(meta.get("pairs_count", 0) or 0))
                        for k, fp in json.loads(meta["fingerprints"]).items()}
            return cls(name, concepts)

        return read_concept_file(path, read)

    def for_view(self, view: EncoderView) -> Concept:
        """This concept's direction for ``view`` (by encoder name, else by fingerprint), checked."""
        c = self.concepts.get(view.slot.name) or next(
            (c for c in self.concepts.values() if c.fingerprint == view.fingerprint()), None)
        if c is None:
            raise AmsmoothError(f"concept '{self.name}' has no direction for encoder {view.slot.name} (it has: "
                                f"{', '.join(self.concepts)}); rebuild it with `amsmooth concept build --encoder …`")
        c.check_encoder(view)
        return c


def resolve_bundle(spec: str | Concept | ConceptBundle, view: EncoderView) -> Concept:
    """One encoder's direction of a concept given as a built-in name, a pairs CSV, a concept or bundle file, a
    :class:`Concept` or a :class:`ConceptBundle`."""
    if isinstance(spec, ConceptBundle):
        return spec.for_view(view)
    if isinstance(spec, Concept):
        spec.check_encoder(view)
        return spec
    if spec in BUILTIN:
        return Concept.builtin(spec, view)
    if str(spec).lower().endswith(".csv"):
        return Concept.from_pairs(view, spec)
    if str(spec).endswith(".safetensors") or Path(spec).exists():
        return ConceptBundle.load(spec).for_view(view)
    raise AmsmoothError(f"unknown concept {spec!r}; built-in: {', '.join(BUILTIN)}, a pairs .csv or a .safetensors "
                        "concept")
