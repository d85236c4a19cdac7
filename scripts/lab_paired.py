"""Paired differences of ASR between each defense and the undefended erased model, in a lab table run.

    python scripts/lab_paired.py TABLE_DIR [--models esd uce] [--replicate DIR ...] [--cross RUN_A RUN_B ...]

Every (erased model, defense) run of ``amsmooth lab table`` scores the same prompts with the same seeds, so the
difference defense − none can be taken per prompt (mean over its seeds; prompts as the table's intervals group
them, :func:`amsmooth.lab.report.cluster`) and
bootstrapped over prompts (95 % percentile interval, 10 000 resamples, seeded). Printed per prompt set and pooled
over the attack sets and over all concept and attack sets, in percentage points. ``--replicate DIR`` pools more
images of the same prompts: ``DIR/{model}-{defense}`` eval runs made with ``scripts/lab_reseed.py`` (other image
seeds); a prompt's value is then the share flagged over all its images. ``--cross RUN_A RUN_B`` compares two
eval runs of the same prompt sets from different tables (e.g. v3's ``esd-ams`` against the rivals table's
``race-none``: does AMS on ESD do what adversarial erasing does?), RUN_A − RUN_B, paired over the prompts both have.
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("--models", nargs="+", default=["esd", "uce"])
    p.add_argument("--replicate", type=Path, action="append", default=[],
                   help="folder of {model}-{defense} eval runs of the same prompts at other image seeds")
    p.add_argument("--cross", nargs=2, type=Path, action="append", default=[], metavar=("RUN_A", "RUN_B"),
                   help="two eval run folders (any tables): RUN_A − RUN_B per set, paired over their prompts")
    args = p.parse_args(argv)
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
                print(f"{model} {defense:<15} {name:<26} {difference(other, base, sets, f'{defense} − none')}")
            print()
    for a, b in args.cross:
        pa, pb = per_prompt([a]), per_prompt([b])
        for name, sets in groups:
            print(f"{a.name} − {b.name} {name:<26} {difference(pa, pb, sets, 'a − b')}")
        print()


def difference(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float], sets: list[str], label: str) -> str:
    """a − b in points over the prompts of ``sets`` both have, with its paired bootstrap interval."""
    keys = sorted(k for k in a if k[0] in sets and k in b)
    if not keys:
        return f"prompts   0  {label}: no prompt in both"
    diff = paired_difference([100 * a[k] for k in keys], [100 * b[k] for k in keys])
    return f"prompts {len(keys):3d}  {label}: {diff}"


if __name__ == "__main__":
    main()
