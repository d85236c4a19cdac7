"""Agreement of the lab nudity detector with labels given by eye, on generated images.

    python scripts/lab_detector_agreement.py [--labels docs/lab/detector-set/labels.csv] [--json out.json]

Reads the labelled set (``scripts/lab_detector_set.py`` collects it; ``label`` is 1 for the lab's nude figure, 0
for anything else) and scores every labelled image with two rules, on the reading of the image (the fitted scene;
no person, no nudity):

- ``old``: the rule before issue 24 — at least ``NUDITY_THRESHOLD`` of the torso and leg pixels have a skin as
  their nearest palette colour, however far (``amsmooth.lab.readout.palette_skin_score``);
- ``new``: ``--detector lab-nudity`` as it is now (``LabDetector("nudity")``).

Prints, per split (``dev``: the half the rule was chosen on, ``test``: the other half, ``all``), the number of
images and of nude labels, the agreement, the false positives (flagged, labelled not nude) and the misses (labelled
nude, not flagged), and lists the ids each rule gets wrong.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image

from amsmooth.lab import readout as D

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("dev", "test", "all")


def read_labels(path: Path) -> list[dict]:
    """The rows with a label (0 or 1); a row with another label stops the script."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bad = [r["id"] for r in rows if r["label"] not in ("0", "1")]
    if bad:
        raise SystemExit(f"{path}: rows {', '.join(bad[:10])} have no label 0/1")
    return rows


def verdicts(folder: Path, rows: list[dict]) -> dict[str, list[bool]]:
    """rule → flagged per row (old and new rules)."""
    new = D.LabDetector("nudity")
    out: dict[str, list[bool]] = {"old": [], "new": []}
    for r in rows:
        img = D.as_array(Image.open(folder / r["image"]))
        scene = D.fit(img)
        person = scene.subject == "person"
        out["old"].append(person and D.palette_skin_score(img, scene.scene) >= D.NUDITY_THRESHOLD)
        out["new"].append(bool(new.detect([img.astype("uint8")])[0].flagged))
    return out


def figures(rows: list[dict], flags: list[bool]) -> dict[str, dict]:
    """split → n, nude, agreement, false positives, misses and the ids wrong."""
    out = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(rows) if split == "all" or r["split"] == split]
        fp = [rows[i]["id"] for i in idx if flags[i] and rows[i]["label"] == "0"]
        miss = [rows[i]["id"] for i in idx if not flags[i] and rows[i]["label"] == "1"]
        n = len(idx)
        out[split] = {"n": n, "nude": sum(rows[i]["label"] == "1" for i in idx),
                      "agreement": (n - len(fp) - len(miss)) / n if n else float("nan"),
                      "false_positives": len(fp), "misses": len(miss), "wrong": {"fp": fp, "miss": miss}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=Path, default=ROOT / "docs" / "lab" / "detector-set" / "labels.csv")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    rows = read_labels(args.labels)
    result = {rule: figures(rows, flags) for rule, flags in verdicts(args.labels.parent, rows).items()}
    print(f"{'rule':5} {'split':5} {'n':>4} {'nude':>4} {'agreement':>9} {'FP':>3} {'miss':>4}  wrong ids")
    for rule, per in result.items():
        for split, f in per.items():
            wrong = f"FP {' '.join(f['wrong']['fp']) or '-'}; miss {' '.join(f['wrong']['miss']) or '-'}"
            print(f"{rule:5} {split:5} {f['n']:4d} {f['nude']:4d} {100 * f['agreement']:8.1f}% "
                  f"{f['false_positives']:3d} {f['misses']:4d}  {wrong if split != 'all' else ''}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
