"""Paired differences of ASR between each defense and the undefended erased model, in a lab table run.

    python scripts/lab_paired.py TABLE_DIR [--models esd uce] [--replicate DIR ...]

Every (erased model, defense) run of ``amsmooth lab table`` scores the same prompts with the same seeds, so the
difference defense − none can be taken per prompt (mean over its seeds; prompts as the table's intervals group
them, :func:`amsmooth.lab.report.cluster`) and
bootstrapped over prompts (95 % percentile interval, 10 000 resamples, seeded). Printed per prompt set and pooled
over the attack sets and over all concept and attack sets, in percentage points. ``--replicate DIR`` pools more
images of the same prompts: ``DIR/{model}-{defense}`` eval runs made with ``scripts/lab_reseed.py`` (other image
seeds); a prompt's value is then the share flagged over all its images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from amsmooth.attacks.stats import paired_difference
from amsmooth.lab.report import NOT_AVERAGED, per_prompt


def runs(args: argparse.Namespace, name: str) -> list[Path]:
    """The table's run ``name`` and the replicates' runs of that name (a replicate need not have every run)."""
    return [args.table / "runs" / name, *[d / name for d in args.replicate if (d / name).is_dir()]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("--models", nargs="+", default=["esd", "uce"])
    p.add_argument("--replicate", type=Path, action="append", default=[],
                   help="folder of {model}-{defense} eval runs of the same prompts at other image seeds")
    args = p.parse_args()
    plan = json.loads((args.table / "plan.json").read_text(encoding="utf-8"))
    concept = [s for s in plan["sets"] if s not in NOT_AVERAGED]
    groups = [(s, [s]) for s in concept + plan["attacks"]]
    groups += [("all attacks", plan["attacks"]), ("all concept + attack sets", concept + plan["attacks"])]
    for model in args.models:
        base = per_prompt(runs(args, f"{model}-none"))
        for defense in (d for d in plan["defenses"] if d != "none"):
            if not (args.table / "runs" / f"{model}-{defense}").is_dir():
                continue
            other = per_prompt(runs(args, f"{model}-{defense}"))
            for name, sets in groups:
                keys = sorted(k for k in base if k[0] in sets and k in other)
                diff = paired_difference([100 * other[k] for k in keys], [100 * base[k] for k in keys])
                print(f"{model} {defense:<15} {name:<26} prompts {len(keys):3d}  {defense} − none: {diff}")
            print()


if __name__ == "__main__":
    main()
