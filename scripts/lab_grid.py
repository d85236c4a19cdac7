"""Image grid of a lab table run: rows = prompts, columns = base model / each (erased model, defense) run.

    python scripts/lab_grid.py TABLE_DIR --set train --set heldout --cases 3 --out grid.png

The base model's images are generated here with each case's seed and the table's steps (the table stores only
its benign ones); every other column is the image the table's eval run stored for that case, framed in red when
the table's detector flagged it (grey: the run has no image for it). ``--runs`` defaults to those of esd-none,
esd-ams, uce-none, uce-ams the table has. For an attack made per erased model (UnlearnDiffAtk, P4D) a row's prompt
is the first run's; the other models' cells are their own attack on the same source prompt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("table", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=None)
    p.add_argument("--cases", type=int, default=3, help="cases per set")
    p.add_argument("--runs", nargs="+", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from amsmooth.lab.report import cluster, run_rows
    from amsmooth.loading import load_pipeline
    from amsmooth.pipelines import undefended
    from amsmooth.prompts import read_prompt_csv

    plan = json.loads((args.table / "plan.json").read_text())
    args.runs = args.runs or [r for r in ("esd-none", "esd-ams", "uce-none", "uce-ams")
                              if (args.table / "runs" / r).is_dir()]
    flagged = {(r, x.prompt_set, x.case_number) for r in args.runs for x in run_rows(args.table / "runs" / r)
               if x.flagged}
    pipe = undefended(load_pipeline("lab"))
    rows, labels = [], []
    for name in args.sets or ["train", "heldout"]:
        firsts: dict[str, object] = {}                  # one case per prompt (its first image seed)
        for c in read_prompt_csv(_prompt_file(args.table, name, args.runs[0])):
            firsts.setdefault(cluster(c.case_number), c)
        cases = list(firsts.values())
        for case in cases[: args.cases]:
            g = torch.Generator().manual_seed(case.seed or 0)
            base = pipe(case.prompt, generator=g, num_inference_steps=plan["steps"],
                        guidance_scale=plan["guidance"]).images[0]
            cells = [(base, None)] + [(_image(args.table / "runs" / r / "images" / name / f"{case.case_number}_0.png"),
                                       (r, name, case.case_number) in flagged) for r in args.runs]
            rows.append(cells)
            labels.append(f"[{name}] {case.prompt}")
    side, pad, text_w = 80, 4, 380
    header = 18
    w = text_w + (1 + len(args.runs)) * (side + pad)
    canvas = Image.new("RGB", (w, header + len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(["base", *args.runs]):
        draw.text((text_w + j * (side + pad) + 4, 3), col, fill="black")
    for i, (cells, label) in enumerate(zip(rows, labels, strict=True)):
        y = header + i * (side + pad)
        draw.text((4, y + side // 2 - 6), label[:64], fill="black")
        for j, (im, hit) in enumerate(cells):
            x = text_w + j * (side + pad)
            canvas.paste(im.convert("RGB").resize((side, side), Image.NEAREST), (x, y))
            if hit:
                draw.rectangle((x, y, x + side - 1, y + side - 1), outline="red", width=3)
    canvas.save(args.out)
    print(f"wrote {args.out}")


def _image(path: Path) -> Image.Image:
    return Image.open(path) if path.is_file() else Image.new("RGB", (32, 32), "grey")


def _prompt_file(table: Path, name: str, run: str) -> Path:
    """A set's prompt CSV: a concept set, a text attack's (shared) or a U-Net attack's (per erased model)."""
    folder = table / "prompts"
    for path in (folder / f"{name}.csv", folder / "shared" / f"{name}.csv",
                 folder / run.split("-")[0] / f"{name}.csv"):
        if path.is_file():
            return path
    raise SystemExit(f"no prompts for set {name!r} in {folder}")


if __name__ == "__main__":
    main()
