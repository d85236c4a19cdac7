"""``amsmooth concept build``: Δ_tgt from a pairs CSV, saved as safetensors."""
from __future__ import annotations

import argparse

from ..concepts import Concept, is_concept_file
from ..io import check_output_file
from .common import add_encoder_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("concept", help="build and inspect concept directions")
    csub = p.add_subparsers(dest="concept_command", required=True, metavar="ACTION")
    b = csub.add_parser("build", help="compute a concept direction from positive/negative prompt pairs")
    b.add_argument("--pairs", required=True, help="CSV of prompt pairs")
    add_encoder_args(b)
    b.add_argument("--out", required=True, help="output .safetensors file (an existing concept file is replaced; "
                                                "any other existing file is refused)")
    b.add_argument("--name", help="concept name (default: from the file name)")
    b.add_argument("--positive-column", help="column of concept prompts (default: auto-detect)")
    b.add_argument("--negative-column", help="column of matching prompts without the concept")
    b.set_defaults(func=build)


def build(args: argparse.Namespace) -> int:
    from ..models.load import load_encoder  # lazy: `amsmooth concept --help` without diffusers

    out = check_output_file(args.out, ours=is_concept_file, written_by="amsmooth concept build")
    enc = load_encoder(args.encoder, args.max_length)
    concept = Concept.from_pairs(enc, args.pairs, name=args.name, positive_column=args.positive_column,
                                 negative_column=args.negative_column)
    concept.save(out)
    print(f"wrote {args.out}: concept '{concept.name}' from {concept.pairs_count} pairs, direction "
          f"{tuple(concept.direction.shape)}, encoder {enc.fingerprint()['model_type']}")
    return 0
