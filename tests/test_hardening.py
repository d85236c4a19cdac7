"""Regression tests of issue #11 (hardening): each case fails on the code before its fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amsmooth.cli.main import main
from amsmooth.errors import AmsmoothError

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]


class FakeDefense:
    """Stands in for a built defense in run_jobs: 8-px gray images, optionally a hook run while 'generating'."""

    spec = type("Spec", (), {"name": "none"})()
    settings: dict = {}

    def __init__(self, during=None) -> None:
        self.during, self.calls = during, []

    def __call__(self, prompt, seed, images, **kwargs):
        from PIL import Image

        from amsmooth.eval.defenses import Generated

        self.calls.append(prompt)
        if self.during is not None:
            self.during(prompt)
        return Generated([Image.new("RGB", (8, 8))] * images, None, 0.1)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and "\n" not in err, err
    return err


# -- security and data loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["../../x", "/abs/path", "a/b", "x" * 300, ".hidden", "a\tb"])
def test_generate_refuses_case_numbers_that_leave_or_cannot_name_a_file(tmp_path, capsys, case):
    csv = tmp_path / "sub" / "p.csv"
    csv.parent.mkdir()
    csv.write_text(f'case_number,prompt\n"{case}",a cat\n')
    out = tmp_path / "sub" / "out"
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(out)]) == 2
    assert "cannot name an image file" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p.csv", "sub"]   # nothing written anywhere


def test_inside_refuses_paths_out_of_the_folder(tmp_path):
    from amsmooth.io import inside

    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert inside(root, "a/1_0.png") == root / "a" / "1_0.png"
    for bad in ("../x.png", "/etc/x.png", "link/x.png"):
        with pytest.raises(AmsmoothError, match="refusing to write"):
            inside(root, bad)


def test_positional_prompts_and_a_prompt_file_cannot_share_case_numbers(tmp_path, capsys):
    csv = tmp_path / "p.txt"
    csv.write_text("a dog\na bird\n")
    out = tmp_path / "out"
    assert main(["generate", "a cat", "a cow", "--prompts-file", str(csv), *FAST, "--out", str(out)]) == 2
    assert "overwrite each other" in one_line_error(capsys)
    assert not out.exists()


def test_atomic_write_fsyncs_the_file_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    import amsmooth.io as io

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    io.atomic_write_bytes(tmp_path / "x.png", b"data")
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == 2   # the file, then its folder
    assert (tmp_path / "x.png").read_bytes() == b"data" and os.listdir(tmp_path) == ["x.png"]


def test_eval_image_is_durable_before_its_row_is_committed(tmp_path, monkeypatch):
    """run_jobs: the PNG's fsync happens before ResultStore.add (a power loss cannot leave a row without image)."""
    import amsmooth.io as io
    from amsmooth.eval.runner import GenerationSettings, Job, run_jobs
    from amsmooth.eval.store import ResultStore
    from amsmooth.prompts import PromptCase

    events: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    real_add = ResultStore.add
    monkeypatch.setattr(ResultStore, "add", lambda self, r: (events.append("add"), real_add(self, r))[1])
    with ResultStore.open(tmp_path, {"x": 1}) as store:
        events.clear()                                  # only what run_jobs does
        stats = run_jobs(FakeDefense(), [Job("s", PromptCase("1", "a cat"))], GenerationSettings(), tmp_path,
                         store)
    assert stats.new == 1 and events.index("add") > events.index("fsync")
    assert (tmp_path / "images" / "s" / "1_0.png").stat().st_size > 0


@pytest.mark.parametrize("content", [b"my notes, no newline", b"a,b\n1,2\n3,4", b"case_number,prompt\n1,x\n2"])
def test_attack_out_that_is_not_ours_is_refused_unchanged(tmp_path, content):
    from amsmooth.attacks.campaign import finished_cases

    out = tmp_path / "existing.csv"
    out.write_bytes(content)
    with pytest.raises(AmsmoothError, match="not written by `amsmooth attack`"):
        finished_cases(out, {})
    assert out.read_bytes() == content


def test_attack_cli_refuses_a_foreign_out_file_unchanged(tmp_path, capsys):
    prompts, out = tmp_path / "p.txt", tmp_path / "existing.csv"
    prompts.write_text("a cat\n")
    out.write_bytes(b"one line")
    assert main(["attack", "concept-pgd", "--encoder", "tiny", "--prompts", str(prompts), "--iterations", "1",
                 "--no-progress", "--out", str(out)]) == 2
    assert "not written by" in one_line_error(capsys) and out.read_bytes() == b"one line"


# -- silent wrong results ------------------------------------------------------------------------------------


def test_sigma_that_would_overflow_is_refused(capsys):
    from amsmooth.config import SIGMA_MAX, SmoothingConfig

    for k in (100.0, -100.0, 1e6):
        with pytest.raises(AmsmoothError, match="exceeds"):
            SmoothingConfig(k=k)
    assert SmoothingConfig(sigma0=0.012, k=9.0).sigma0 == 0.012           # the paper's largest setting passes
    assert SmoothingConfig(sigma0=0.0, k=1e6).k == 1e6                     # σ ≡ 0: nothing can overflow
    assert 0.012 * 2.718281828 ** 9 < SIGMA_MAX
    assert main(["relevance", "a nude woman", "--encoder", "tiny", "--k", "200", "--format", "jsonl"]) == 2
    assert "exceeds" in one_line_error(capsys)
    # certify printed `nan` before: now refused before any sampling
    assert main(["certify", "a nude woman", "--encoder", "tiny", "--rho", "1", "--n", "7", "--k", "200"]) == 2
    assert "exceeds" in one_line_error(capsys)


@pytest.mark.parametrize("flag,value", [("--guidance", "nan"), ("--guidance", "inf"), ("--strength", "nan"),
                                        ("--sigma0", "nan"), ("--k", "-inf"), ("--seed", str(2**64)),
                                        ("--seed", "-1"), ("--seed", "1e30"), ("--seed", "inf")])
def test_generate_refuses_non_finite_numbers_and_bad_seeds(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    assert main(["generate", "a cat", *FAST, f"{flag}={value}", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert flag in err and not out.exists()


@pytest.mark.parametrize("cell,match", [("1e30", "2^63"), ("inf", "finite"), (str(2**64), "2^63"),
                                        ("4.5", "not an integer"), ("nan", "finite")])
def test_csv_seed_cells_give_one_line_errors(tmp_path, capsys, cell, match):
    csv = tmp_path / "p.csv"
    csv.write_text(f"case_number,prompt,evaluation_seed\n1,a cat,{cell}\n")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert match in err and "row 2" in err


def test_csv_guidance_nan_is_refused(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("case_number,prompt,evaluation_guidance\n1,a cat,nan\n")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(tmp_path / "o")]) == 2
    assert "finite" in one_line_error(capsys)


def test_csv_with_a_utf8_bom_is_read(tmp_path):
    from amsmooth.prompts import read_prompts_file

    csv = tmp_path / "p.csv"
    csv.write_bytes("\ufeffprompt,case_number,evaluation_seed\na cat,7,3\n".encode("utf-8"))
    (case,) = read_prompts_file(csv)
    assert (case.case_number, case.prompt, case.seed) == ("7", "a cat", 3)


def test_pairs_csv_with_a_utf8_bom_is_read(tmp_path):
    from amsmooth.concepts import read_pairs

    path = tmp_path / "pairs.csv"
    path.write_bytes("\ufeffpositive,negative\na nude,a dressed\n".encode("utf-8"))
    assert read_pairs(path)[:2] == (["a nude"], ["a dressed"])


def test_a_concept_is_refused_for_an_encoder_with_other_layers_but_the_same_embeddings(tiny_nudity):
    import torch

    from amsmooth.models.tiny import tiny_text_encoder

    same, tuned = tiny_text_encoder(), tiny_text_encoder()
    with torch.no_grad():
        tuned.model.get_parameter("encoder.layers.0.mlp.fc1.weight").add_(0.05)
    assert torch.equal(same.embedding.weight, tuned.embedding.weight)
    assert same.fingerprint() == tiny_nudity.fingerprint != tuned.fingerprint()
    tiny_nudity.check_encoder(same)
    with pytest.raises(AmsmoothError, match="was built for"):
        tiny_nudity.check_encoder(tuned)


def test_word_cache_smaller_than_a_batch_gives_the_uncached_scores(tiny_encoder, tiny_nudity):
    from amsmooth import AdaptiveMedianSmoothing, SmoothingConfig

    prompts = ["a nude cat", "a nude cat on a red mat with green dogs and blue birds"]
    small = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(cache_size=2))
    none = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(cache_size=0))
    small.relevance(prompts[:1])                         # caches two of the words the next batch reuses
    got = small.relevance(prompts)                       # used to raise KeyError (evicted while counted cached)
    assert got == none.relevance(prompts) and len(small.cache) == 2


@pytest.mark.parametrize("prompt", ["“👉👌”", "a  cat ,  (on) a mat", " leading space", "-- --", "()"])
def test_blacklist_leaves_prompts_without_a_listed_word_byte_identical(prompt):
    from amsmooth.baselines.blacklist import Blacklist

    bl = Blacklist.default()
    assert not bl.matches(prompt) and bl.clean(prompt) == prompt
    assert bl.clean("a nude woman") == "a woman"


# -- crashes and poor messages -------------------------------------------------------------------------------


def test_first_minilm_use_prints_nothing_on_stdout(tmp_path, monkeypatch, capsys):
    """The package prints a banner when imported and when it extracts: on the first ``--encoder minilm`` run that
    led stdout, breaking ``--format jsonl``. A fresh import and a fresh cache must print nothing."""
    import sys

    from amsmooth.encoders import minilm_folder

    monkeypatch.setenv("AMSMOOTH_CACHE_DIR", str(tmp_path))
    monkeypatch.delitem(sys.modules, "all_minilm_l6_v2", raising=False)
    capsys.readouterr()
    folder = minilm_folder()
    assert (Path(folder) / "config.json").is_file() and capsys.readouterr().out == ""


def _stored_run(run_dir: Path) -> Path:
    from amsmooth.eval.store import ImageResult, ResultStore

    with ResultStore.open(run_dir, {"command": "eval", "defense": "none"}) as store:
        store.add(ImageResult("s", "1", 0, "a cat", "none", {}, 1, None, "nudenet", {"x": 0.1}, False, 1.0, "i.png"))
    return run_dir


def test_config_json_is_created_with_the_umask_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        run = _stored_run(tmp_path / "run")
    finally:
        os.umask(mask)
    assert (run / "config.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("update", ["scores = 'not json'", "defense_config = '[1]'", "seconds = 'slow'",
                                    "flagged = 7", "k = 'one'"])
def test_report_on_a_tampered_row_is_one_line_error(tmp_path, capsys, update):
    import sqlite3

    run = _stored_run(tmp_path / "run")
    with sqlite3.connect(run / "results.sqlite") as conn:
        conn.execute(f"UPDATE results SET {update}")
    assert main(["report", str(run)]) == 2
    assert "is damaged" in one_line_error(capsys)


def test_sld_refuses_clip_skip_instead_of_ignoring_it():
    import torch

    from amsmooth.baselines.sld import SLDPipeline
    from amsmooth.models.tiny import tiny_pipeline

    sld = SLDPipeline.from_pipeline(tiny_pipeline(), "sld-max")   # the family classes pass clip_skip on
    with pytest.raises(AmsmoothError, match="clip_skip is not supported"):
        sld("a cat", clip_skip=1, num_inference_steps=1, generator=torch.Generator().manual_seed(0))


def _jobs(*cases: str):
    from amsmooth.eval.runner import Job
    from amsmooth.prompts import PromptCase

    return [Job("s", PromptCase(c, f"prompt {c}")) for c in cases]


def test_a_case_claimed_by_another_live_process_is_left_to_it(tmp_path):
    import subprocess

    from amsmooth.eval.runner import GenerationSettings, run_jobs
    from amsmooth.eval.store import ResultStore, process_owner

    other = subprocess.Popen(["sleep", "60"])
    try:
        with ResultStore.open(tmp_path, {"x": 1}) as store:
            store._conn.execute("INSERT INTO claims VALUES ('s', '1', ?, 0)", (process_owner(other.pid),))
            fake = FakeDefense()
            stats = run_jobs(fake, _jobs("1", "2"), GenerationSettings(), tmp_path, store)
            assert (stats.new, stats.busy, fake.calls) == (1, 1, ["prompt 2"])
            assert store.done_keys() == {("s", "2", 0)}
            assert store._conn.execute("SELECT case_number FROM claims").fetchall() == [("1",)]   # 2 released
    finally:
        other.kill()
        other.wait()


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    import subprocess

    from amsmooth.eval.runner import GenerationSettings, run_jobs
    from amsmooth.eval.store import ResultStore, process_owner

    dead = subprocess.Popen(["sleep", "60"])
    owner = process_owner(dead.pid)
    dead.kill()
    dead.wait()
    with ResultStore.open(tmp_path, {"x": 1}) as store:
        store._conn.execute("INSERT INTO claims VALUES ('s', '1', ?, 0)", (owner,))
        stats = run_jobs(FakeDefense(), _jobs("1"), GenerationSettings(), tmp_path, store)
    assert (stats.new, stats.busy) == (1, 0)


def test_images_another_process_stored_meanwhile_are_not_counted_as_new(tmp_path):
    from amsmooth.eval.runner import GenerationSettings, run_jobs
    from amsmooth.eval.store import ImageResult, ResultStore

    def other_process_finishes(prompt):
        with ResultStore.open(tmp_path, {"x": 1}) as other:
            other.add(ImageResult("s", "1", 0, prompt, "none"))

    with ResultStore.open(tmp_path, {"x": 1}) as store:
        stats = run_jobs(FakeDefense(other_process_finishes), _jobs("1"), GenerationSettings(), tmp_path, store)
    assert (stats.new, stats.skipped) == (0, 1)


# -- batch invariance ----------------------------------------------------------------------------------------


def test_smoothed_embedding_of_a_prompt_does_not_depend_on_its_batch(tiny_encoder, tiny_nudity):
    import torch

    from amsmooth import AdaptiveMedianSmoothing, SmoothingConfig

    ams = AdaptiveMedianSmoothing(tiny_encoder, [tiny_nudity], SmoothingConfig(n=5, sigma0=0.05))
    prompts = ["a nude woman on a beach", "a red car", "two dogs playing in the snow"]
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    alone = [ams.encode([p], g(11 + i)) for i, p in enumerate(prompts)]
    together = ams.encode(prompts, [g(11), g(12), g(13)])            # one generator per prompt
    reordered = ams.encode(prompts[::-1], [g(13), g(12), g(11)])
    for i in range(3):
        assert torch.equal(together[i], alone[i][0]) and torch.equal(reordered[2 - i], alone[i][0])
    shared = ams.encode(prompts, g(5))                                 # one generator for all: as if alone
    assert all(torch.equal(shared[i], ams.encode([p], g(5))[0]) for i, p in enumerate(prompts))
    with pytest.raises(AmsmoothError, match="one per prompt"):
        ams.encode(prompts, [g(1), g(2)])


def test_a_usage_error_is_one_line_from_a_fresh_process(tmp_path):
    """argparse's usage errors are amsmooth's one line too, and no library prints anything around it (transformers
    warned twice about torchvision on import of every command before)."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    code = "import sys; from amsmooth.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = ["generate", "a cat", "--seed", "1e30", "--out", str(tmp_path / "o")]
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.startswith("amsmooth: error: argument --seed") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()
