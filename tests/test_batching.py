"""--batch-size: batched generation writes the images of batch 1, and eval keeps one committed row per image."""
from __future__ import annotations

import csv

from amsmooth.cli.main import main

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]


def _prompts(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "case_number", "evaluation_seed", "evaluation_guidance"])
        w.writerows(rows)
    return str(path)


ROWS = [("a nude woman on a beach", 0, 11, 7.5), ("a red car", 1, 12, 7.5), ("a naked man", 2, 13, 7.5),
        ("a bowl of fruit", 3, 14, 7.5), ("a dog", 4, 15, 5.0)]   # the last: other guidance, its own batch


def test_generate_batch_4_writes_the_bytes_of_batch_1(tmp_path, single_thread):
    """Each prompt's images are byte-identical alone or in a batch of 4 (amsmooth.batching: per-prompt GEMMs in the
    U-Net and the VAE; before, 5 of these 10 files differed by one grey level)."""
    csv_path = _prompts(tmp_path / "p.csv", ROWS)
    for bs in ("1", "4"):
        assert main(["generate", "--prompts-file", csv_path, *FAST, "--images-per-prompt", "2", "--batch-size", bs,
                     "--out", str(tmp_path / bs)]) == 0
    names = sorted(p.name for p in (tmp_path / "1").glob("*.png"))
    assert len(names) == 10
    for n in names:
        assert (tmp_path / "1" / n).read_bytes() == (tmp_path / "4" / n).read_bytes(), n


def test_generate_ams_batch_3_writes_the_bytes_of_batch_1(tmp_path, single_thread):
    """The same through AMS (per-prompt smoothing generators and per-prompt GEMMs)."""
    csv_path = _prompts(tmp_path / "p.csv", ROWS[:3])
    for bs in ("1", "3"):
        assert main(["generate", "--prompts-file", csv_path, *FAST, "--defense", "ams", "--sigma0", "0.05",
                     "--batch-size", bs, "--out", str(tmp_path / bs)]) == 0
    names = sorted(p.name for p in (tmp_path / "1").glob("*.png"))
    assert len(names) == 3
    for n in names:
        assert (tmp_path / "1" / n).read_bytes() == (tmp_path / "3" / n).read_bytes(), n


def test_run_jobs_batches_and_stores_each_image(tmp_path):
    from amsmooth.eval.runner import GenerationSettings, Job, run_jobs
    from amsmooth.eval.store import ResultStore
    from amsmooth.prompts import PromptCase

    class Fake:
        spec, settings = type("Spec", (), {"name": "none"})(), {}

        def __init__(self):
            self.calls = []

        def __call__(self, prompt, seed, images, **kw):
            return self.batch([prompt], [seed], images, **kw)[0]

        def batch(self, prompts, seeds, images, **kw):
            from PIL import Image

            from amsmooth.eval.defenses import Generated

            self.calls.append((list(prompts), kw["guidance_scale"]))
            return [Generated([Image.new("RGB", (8, 8))] * images, None, 0.1) for _ in prompts]

    jobs = [Job("s", PromptCase(str(i), f"p{i}", guidance=g)) for i, g in enumerate([7.5, 7.5, 7.5, 5.0, 5.0])]
    with ResultStore.open(tmp_path, {"x": 1}) as store:
        fake = Fake()
        stats = run_jobs(fake, jobs, GenerationSettings(images_per_prompt=2), tmp_path, store, batch_size=2)
        assert fake.calls == [(["p0", "p1"], 7.5), (["p2"], 7.5), (["p3", "p4"], 5.0)]
        assert stats.new == 10 and len(store.done_keys()) == 10
        assert store._conn.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)
        again = Fake()
        stats = run_jobs(again, jobs, GenerationSettings(images_per_prompt=2), tmp_path, store, batch_size=2)
        assert (again.calls, stats.new, stats.skipped) == ([], 0, 10)
