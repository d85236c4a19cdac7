"""The lab nudity detector flags the renderer's nude figure only — not a clothed figure of any colour, not a
warm-coloured (pink, magenta, salmon, orange) body — and scripts/lab_detector_agreement.py counts right."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from amsmooth.lab import readout as D
from amsmooth.lab import world as W

ROOT = Path(__file__).resolve().parents[1]
# body colours of generated images the old rule took for skin (docs/lab.md, detector section)
WARM = {"pink": (214, 60, 127), "magenta": (190, 10, 110), "salmon": (190, 92, 50), "orange-tan": (200, 123, 50),
        "red-pink": (183, 69, 86)}


def _score(s: W.Scene) -> float:
    return D.nudity_score(W.render(s).astype(np.float32), s.scene)


def test_every_rendered_nude_figure_is_flagged_and_no_clothed_one() -> None:
    for scene in W.SCENES:
        for skin in W.SKINS:
            for dx in range(-2, 3):
                for hair in (False, True):
                    for violent in (False, True):
                        s = W.Scene(scene=scene, skin=skin, dx=dx, long_hair=hair, nude=True, violent=violent)
                        assert _score(s) >= 0.8, s
                for colour in W.COLOURS:
                    for garment in W.GARMENTS:
                        s = W.Scene(scene=scene, skin=skin, dx=dx, colour=colour, garment=garment)
                        assert _score(s) <= D.NUDITY_THRESHOLD - 0.1, s   # a dress bares the legs: 0.39


def test_the_detector_reads_rendered_figures_right() -> None:
    det = D.LabDetector("nudity")
    scenes = [W.Scene(scene=sc, skin=sk, nude=True, dx=dx) for sc in W.SCENES for sk in W.SKINS for dx in (-2, 1)]
    scenes += [W.Scene(scene=sc, skin=sk, colour=c, garment=g) for sc in ("beach", "city") for sk in W.SKINS
               for c in W.COLOURS for g in ("shirt", "dress")]
    flags = [d.flagged for d in det.detect([W.render(s) for s in scenes])]
    assert flags == [s.nude for s in scenes]


def _warm_body(colour: tuple[int, int, int], skin: str, scene: str) -> np.ndarray:
    """A clothed figure (shirt, bare-legged dress look) whose torso, arms and legs are painted ``colour``: the
    pink / orange bodies blurry generations show, with the renderer's face and hair."""
    s = W.Scene(scene=scene, skin=skin, colour="white", garment="shirt")
    img = W.render(s)
    x = 13
    body = np.zeros(img.shape[:2], bool)
    body[9:18, x:x + 6] = body[10:17, x - 2:x] = body[10:17, x + 6:x + 8] = True
    body[18:27, x:x + 2] = body[18:27, x + 4:x + 6] = True
    img[body] = colour
    return img


def test_warm_coloured_bodies_are_not_nude() -> None:
    old_flags = 0
    for scene in ("beach", "city", "forest", "snow"):
        for skin in W.SKINS:
            for name, colour in WARM.items():
                img = _warm_body(colour, skin, scene).astype(np.float32)
                assert D.nudity_score(img, scene) < D.NUDITY_THRESHOLD, (name, skin, scene)
                old_flags += D.palette_skin_score(img, scene) >= D.NUDITY_THRESHOLD
    assert old_flags > 0          # the old rule took some of them for skin: the case this rule is for


def _labelled_folder(folder: Path, rows: list[tuple[W.Scene, int, str]]) -> Path:
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "split", "label", "note"])
        for i, (s, label, split) in enumerate(rows):
            Image.fromarray(W.render(s)).save(folder / f"{i}.png")
            w.writerow([i, f"{i}.png", split, label, ""])
    return folder / "labels.csv"


def test_agreement_script_counts_agreement_false_positives_and_misses(tmp_path) -> None:
    nude, clothed = W.Scene(nude=True), W.Scene(colour="red")
    labels = _labelled_folder(tmp_path / "set", [(nude, 1, "dev"), (clothed, 0, "dev"), (nude, 0, "test"),
                                                 (clothed, 1, "test"), (W.Scene(colour="blue"), 0, "test")])
    out = tmp_path / "f.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "lab_detector_agreement.py"), "--labels", str(labels),
                    "--json", str(out)], check=True, capture_output=True)
    got = json.loads(out.read_text())
    for rule in ("old", "new"):          # both rules read rendered figures right: the labels make the errors
        dev, test, all_ = (got[rule][k] for k in ("dev", "test", "all"))
        assert (dev["n"], dev["nude"], dev["agreement"], dev["false_positives"], dev["misses"]) == (2, 1, 1.0, 0, 0)
        assert (test["n"], test["nude"], test["false_positives"], test["misses"]) == (3, 1, 1, 1)
        assert abs(test["agreement"] - 1 / 3) < 1e-9 and abs(all_["agreement"] - 3 / 5) < 1e-9
        assert test["wrong"] == {"fp": ["2"], "miss": ["3"]}


def test_agreement_script_refuses_unlabelled_rows(tmp_path) -> None:
    labels = _labelled_folder(tmp_path / "set", [(W.Scene(), 0, "dev")])
    labels.write_text(labels.read_text().replace(",0,", ",,"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lab_detector_agreement.py"), "--labels",
                           str(labels)], capture_output=True, text=True)
    assert done.returncode != 0 and "no label" in done.stderr


def test_set_script_collects_runs_once_each_and_draws_sheets(tmp_path) -> None:
    from amsmooth.eval.store import ImageResult, ResultStore

    scenes = [W.Scene(nude=True), W.Scene(colour="red"), W.Scene(colour="orange")]
    for name, picked in (("a", scenes), ("b", scenes[:1])):          # run b repeats run a's first image
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        with ResultStore.open(run, {"model": "lab", "unet": f"/m/{name}.safetensors"}) as store:
            for i, s in enumerate(picked):
                Image.fromarray(W.render(s)).save(run / f"{i}.png")
                store.add(ImageResult("warm", f"{i}-0", 0, f"prompt {i}", "none", seed=0, image=f"{i}.png"))
    out = tmp_path / "set"
    script = str(ROOT / "scripts" / "lab_detector_set.py")
    subprocess.run([sys.executable, script, "collect", str(tmp_path / "runs"), "--out", str(out)], check=True,
                   capture_output=True)
    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["model"], r["case_number"], r["label"]) for r in rows] == [
        ("a", "a", "0-0", ""), ("a", "a", "1-0", ""), ("a", "a", "2-0", "")]
    for r, s in zip(rows, scenes, strict=True):
        assert np.array_equal(np.asarray(Image.open(out / r["image"])), W.render(s))
        assert r["split"] in ("dev", "test")
    done = subprocess.run([sys.executable, script, "sheets", str(out), "--out", str(tmp_path / "sheets"), "--grid",
                           "2", "--scale", "4"], check=True, capture_output=True, text=True)
    sheets = done.stdout.split()
    assert len(sheets) == 1 and Image.open(sheets[0]).size == (2 * (128 + 4), 2 * (128 + 14 + 4))
