"""Build and look at the lab nudity detector's labelled set of *generated* images.

    python scripts/lab_detector_set.py collect [RUN_DIR ...] [--grids docs/lab/detector-set/grids.json] \
        --out docs/lab/detector-set [--per-run N] [--seed 0]
    python scripts/lab_detector_set.py sheets docs/lab/detector-set --out sheets/ [--grid 5] [--scale 8]

``collect`` takes the images of ``amsmooth eval`` runs (each RUN_DIR, or every run found below it), at most
``--per-run`` of each run (a seeded draw, every image when it has fewer), copies them as ``NNNN.png`` into OUT
and writes ``OUT/labels.csv`` — one row per image with its source (run, model, defense, prompt set, case number,
seed, prompt), an empty ``label`` to be
filled in by looking, and ``split`` (``dev`` / ``test`` by a hash of the image's bytes, so the rule is chosen on
``dev`` and reported on ``test`` too). ``sheets`` draws numbered contact sheets (``grid``×``grid`` images,
each upscaled ``scale``× without smoothing, its id written above it) to label the images by eye.

``--grids`` adds the cells of committed lab table grids (``scripts/lab_grid.py`` pastes each generated 32×32 image
upscaled 2.5× by nearest-neighbour sampling, so sampling each source pixel's centre gives the image back exactly;
checked by re-upscaling). The grid is read from git at the commit the JSON names; identical images (the base
column repeats across grids) are kept once.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from amsmooth.eval.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
SIDE, PAD, TEXT_W, HEADER = 80, 4, 380, 18          # scripts/lab_grid.py's layout

FIELDS = ("id", "image", "run", "model", "defense", "prompt_set", "case_number", "seed", "prompt",
          "split", "label", "note")


def find_runs(roots: list[Path]) -> list[Path]:
    """Every eval run (a folder with ``results.sqlite``) at or below each root, sorted."""
    out: list[Path] = []
    for root in roots:
        out += sorted(p.parent for p in root.rglob("results.sqlite"))
    return out


def model_name(config: dict) -> str:
    """The run's model: its --model-label, else the U-Net file's stem, else ``base``."""
    return config.get("model_label") or (Path(config["unet"]).stem if config.get("unet") else "base")


def _run_images(run: Path) -> list[tuple[dict, Image.Image]]:
    """(source, image) of every stored image of an eval run."""
    config = json.loads((run / "config.json").read_text())
    with ResultStore.read(run) as store:
        rows = sorted((r for r in store.rows() if r.image), key=lambda r: r.key)
    return [({"run": run.name, "model": model_name(config), "defense": r.defense, "prompt_set": r.prompt_set,
              "case_number": r.case_number, "seed": r.seed, "prompt": r.prompt_used or r.prompt},
             Image.open(run / r.image).convert("RGB")) for r in rows]


def grid_cells(spec: dict) -> list[tuple[dict, Image.Image]]:
    """(source, 32×32 image) of every cell of a committed lab grid (exact: re-upscaling gives the cell back)."""
    raw = subprocess.run(["git", "-C", str(ROOT), "show", f"{spec['commit']}:{spec['path']}"], check=True,
                         capture_output=True).stdout
    grid = np.asarray(Image.open(BytesIO(raw)).convert("RGB"))
    centre = np.round(SIDE / 32 * np.arange(32) + (SIDE / 32 - 1) / 2).astype(int)
    out = []
    for i, (prompt_set, label) in enumerate(spec["rows"]):
        for j, column in enumerate(spec["columns"]):
            y, x = HEADER + i * (SIDE + PAD), TEXT_W + j * (SIDE + PAD)
            cell = grid[y:y + SIDE, x:x + SIDE]
            small = np.ascontiguousarray(cell[centre][:, centre])
            back = np.asarray(Image.fromarray(small).resize((SIDE, SIDE), Image.NEAREST))
            if not (back == cell).all():
                raise SystemExit(f"{spec['path']} row {i} column {column}: not an exact 2.5x nearest upscale")
            model, _, defense = column.partition("-")
            out.append(({"run": f"{spec['path']}@{spec['commit']} row {i} ({spec['run']})", "model": model,
                         "defense": defense or "none", "prompt_set": prompt_set, "case_number": f"grid-{i}",
                         "seed": 0, "prompt": label}, Image.fromarray(small)))
    return out


def split_of(image: Image.Image) -> str:
    """``dev`` or ``test``, from the image's bytes (stable whatever else is collected)."""
    return "dev" if hashlib.sha1(np.asarray(image).tobytes()).digest()[0] % 2 == 0 else "test"


def collect(roots: list[Path], grids: Path | None, out: Path, per_run: int, seed: int) -> int:
    rng = random.Random(seed)
    found: list[tuple[dict, Image.Image]] = []
    for spec in json.loads(grids.read_text())["grids"] if grids else []:
        found += grid_cells(spec)
    for run in find_runs(roots):
        images = _run_images(run)
        found += images if len(images) <= per_run else [images[i] for i in
                                                       sorted(rng.sample(range(len(images)), per_run))]
    seen, rows = set(), []
    for source, image in found:
        key = np.asarray(image).tobytes()
        if key not in seen:
            seen.add(key)
            rows.append((source, image))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for i, (source, image) in enumerate(rows):
            name = f"{i:04d}.png"
            image.save(out / name)
            w.writerow({"id": i, "image": name, **source, "split": split_of(image), "label": "", "note": ""})
    return len(rows)


def sheets(folder: Path, out: Path, grid: int, scale: int) -> list[Path]:
    from PIL import Image, ImageDraw

    with (folder / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out.mkdir(parents=True, exist_ok=True)
    cell, pad = 32 * scale, 14
    paths = []
    for start in range(0, len(rows), grid * grid):
        sheet = Image.new("RGB", (grid * (cell + 4), grid * (cell + pad + 4)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for j, r in enumerate(rows[start:start + grid * grid]):
            x, y = (j % grid) * (cell + 4), (j // grid) * (cell + pad + 4)
            draw.text((x + 2, y + 1), r["id"], fill=(0, 0, 0))
            img = Image.open(folder / r["image"]).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(img, (x, y + pad))
        path = out / f"sheet-{start:04d}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("runs", nargs="*", type=Path)
    c.add_argument("--grids", type=Path, help="JSON of committed lab grids to take the cells of")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--per-run", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sheets")
    s.add_argument("folder", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--grid", type=int, default=5)
    s.add_argument("--scale", type=int, default=8)
    args = p.parse_args()
    if args.cmd == "collect":
        print(f"{collect(args.runs, args.grids, args.out, args.per_run, args.seed)} images → {args.out}")
    else:
        for path in sheets(args.folder, args.out, args.grid, args.scale):
            print(path)


if __name__ == "__main__":
    main()
