"""`amsmooth utility` on the tiny pipeline: FID with the real TF-FID Inception network, CLIP score with a user's
(tiny, random) CLIP folder or skipped with a clear message; the report pools eval and utility runs."""
from __future__ import annotations

import math

import pytest

from amsmooth.cli.main import main
from amsmooth.eval.metrics import fid_from_folders
from amsmooth.eval.runner import Shard
from amsmooth.eval.store import ResultStore

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]
CAPTIONS = ("case_number,prompt,evaluation_seed\n000001,A bicycle replica with a clock.,41\n"
            "000002,A black motorcycle parked in front of a garage.,42\n000003,A cat on a sofa.,43\n"
            "000004,Two dogs in the snow.,44\n")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "coco.csv"
    path.write_text(CAPTIONS)
    return path


@pytest.fixture(scope="module")
def ams_run(tmp_path_factory, coco, tiny_clip_dir):
    """AMS against the undefended model as reference, with CLIP score, run as two shards one after the other:
    the first finds the other's images missing and leaves the metrics to it."""
    import amsmooth.eval.session as session

    run = tmp_path_factory.mktemp("utility") / "ams"
    args = ["utility", *FAST, "--defense", "ams", "--prompts", str(coco), "--reference-defense", "none",
            "--clip", str(tiny_clip_dir), "--out", str(run)]
    for index in (0, 1):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(session, "process_shard", lambda device, i=index: (Shard(i, 2), device))
            assert main(args) == 0
        with ResultStore.read(run) as store:
            assert store.count() == 2 * (index + 1) and ("fid" in store.metrics()) == (index == 1)
    return run


def test_utility_rows_reference_and_metrics(ams_run):
    with ResultStore.read(ams_run) as store:
        rows, metrics = store.rows(), store.metrics()
    assert [r.case_number for r in rows] == ["000001", "000003", "000002", "000004"]  # shard 0, then shard 1
    assert all(r.flagged is None and r.detector is None and r.scores == {} and r.seconds > 0 for r in rows)
    refs = sorted(p.name for p in (ams_run / "reference" / "coco").iterdir())
    assert refs == [f"00000{i}_0.png" for i in range(1, 5)]
    # the stored FID is the real Inception FID between the two folders
    fid = metrics["fid"]
    assert fid.n == 4 and fid.details["n_reference"] == 4 and "tf-inception" in fid.details["network"]
    assert fid.value == pytest.approx(fid_from_folders(ams_run / "reference" / "coco", ams_run / "images" / "coco"),
                                      rel=1e-6, abs=1e-6)
    assert fid.value > 1e-3                          # AMS changes the images
    clip = metrics["clip_score"]
    assert clip.n == 4 and 0.0 <= clip.value <= 100.0 and math.isfinite(clip.value)


def test_identical_images_give_fid_zero_clip_skipped_and_the_report_pools_runs(tmp_path, coco, ams_run, capsys):
    """--defense none against the undefended reference images of the same seeds: the same images, FID ≈ 0."""
    util, robust = tmp_path / "util", tmp_path / "robust"
    assert main(["utility", *FAST, "--defense", "none", "--prompts", str(coco),
                 "--reference", str(ams_run / "reference" / "coco"), "--out", str(util)]) == 0
    out = capsys.readouterr().out
    assert "CLIP score: skipped — no --clip SRC given" in out
    with ResultStore.read(util) as store:
        metrics = store.metrics()
    assert abs(metrics["fid"].value) < 1e-3 and "clip_score" not in metrics
    assert main(["eval", *FAST, "--defense", "none", "--prompts", str(coco), "--limit", "2",
                 "--detector", "nudenet", "--out", str(robust)]) == 0
    assert main(["report", str(robust), str(util), str(ams_run), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    none_row = next(line for line in table.splitlines() if "w/o defense" in line)
    assert "| 0.00 | 0.00 | 0.000 |" in none_row      # ASR of the eval run, FID of the utility run: one row
    assert (tmp_path / "report.png").is_file()


def test_utility_bad_reference(tmp_path, coco, capsys):
    assert main(["utility", *FAST, "--defense", "none", "--prompts", str(coco), "--reference",
                 str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "image folder not found" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_reference_model_gives_the_papers_fid_against_the_original_model(tmp_path, coco):
    """The unlearned model (--unet: another U-Net) against the original model's images: FID > 0, where
    --reference-defense none (the unlearned model against itself) gives 0."""
    from amsmooth.models.tiny import tiny_components

    unet = tmp_path / "unlearned-unet"
    tiny_components(seed=1)["unet"].save_pretrained(unet)
    common = ["utility", *FAST, "--unet", str(unet), "--defense", "none", "--prompts", str(coco), "--limit", "2"]
    assert main([*common, "--reference-defense", "none", "--out", str(tmp_path / "self")]) == 0
    assert main([*common, "--reference-model", "tiny", "--out", str(tmp_path / "paper")]) == 0
    with ResultStore.read(tmp_path / "self") as a, ResultStore.read(tmp_path / "paper") as b:
        itself, paper = a.metrics()["fid"], b.metrics()["fid"]
    assert abs(itself.value) < 1e-3 and paper.value > 1.0 and paper.details["reference"] == "model tiny"
    (ref,) = (tmp_path / "paper").glob("reference-model-*")
    assert paper.value == pytest.approx(fid_from_folders(ref / "coco", tmp_path / "paper" / "images" / "coco"),
                                        rel=1e-6, abs=1e-6)


def test_reference_model_that_cannot_load_changes_nothing(tmp_path, coco, capsys):
    run = tmp_path / "run"
    assert main(["utility", *FAST, "--defense", "none", "--prompts", str(coco), "--reference-model",
                 str(tmp_path / "no-such-model"), "--out", str(run)]) == 2
    assert capsys.readouterr().err.startswith("amsmooth: error:")
    assert not (run / "config.json").exists() and not list(run.rglob("*.png"))
