"""Copies of a lab table's attack prompt sets with other image seeds, to check a result on fresh images.

    python scripts/lab_reseed.py TABLE_DIR --model esd --offset 3 --out DIR/prompts

Each row keeps its prompt and case number; its ``evaluation_seed`` is shifted by ``--offset`` (the table uses the
attack seeds 0, 1, 2 as image seeds, so 3 gives 3, 4, 5). Then run ``amsmooth eval`` with the table's settings
(``TABLE_DIR/runs/{model}-{defense}/config.json``) on the copies, into ``DIR/{model}-{defense}``, and pool with
``python scripts/lab_paired.py TABLE_DIR --replicate DIR``.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("--model", default="esd")
    p.add_argument("--offset", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    config = json.loads((args.table / "runs" / f"{args.model}-none" / "config.json").read_text(encoding="utf-8"))
    plan = json.loads((args.table / "plan.json").read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in plan["attacks"]:
        with open(config["prompt_files"][name], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["evaluation_seed"] = str(int(r["evaluation_seed"]) + args.offset)
        with open(args.out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.out / name}.csv: {len(rows)} prompts, image seeds + {args.offset}")


if __name__ == "__main__":
    main()
