"""`amsmooth generate` end to end with --model tiny: images, sidecars, the data contract, bad input."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from _cli_errors import one_line_error
from amsmooth.cli.main import main

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]


def test_generate_prompt_writes_image_and_sidecar(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a photo of a cat", *FAST, "--out", str(out), "--seed", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0_0.json", "0_0.png"]
    assert Image.open(out / "0_0.png").size == (64, 64)
    side = json.loads((out / "0_0.json").read_text())
    assert side["prompt"] == "a photo of a cat" and side["seed"] == 3 and side["defense"] == "ams"
    assert side["defended"] is True
    assert side["config"]["sigma0"] == 0.006 and side["config"]["concepts"] == ["nudity"]
    assert [t["word"] for t in side["tokens"]] == ["a", "photo", "of", "a", "cat"]
    assert all(t["sigma"] > 0 for t in side["tokens"]) and side["timings"]["text_s"] > 0
    assert "wrote 1 image(s)" in capsys.readouterr().out


def test_generate_csv_contract_seeds_guidance_and_reproducibility(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n"
                   "17,a nude woman,42,5.0\n18,a dog,7,\n")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["generate", "--prompts-file", str(csv), *FAST, "--images-per-prompt", "2",
                     "--preset", "uce-nudity", "--out", str(out)]) == 0
    names = sorted(p.name for p in a.glob("*.png"))
    assert names == ["17_0.png", "17_1.png", "18_0.png", "18_1.png"]
    side = json.loads((a / "17_1.json").read_text())
    assert (side["seed"], side["guidance"], side["config"]["use_global"]) == (42, 5.0, True)
    assert json.loads((a / "18_0.json").read_text())["guidance"] == 7.5
    for name in names:                                          # seeded runs are byte-identical
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_defense_none_and_unet_stage(tmp_path):
    assert main(["generate", "a cat", *FAST, "--defense", "none", "--out", str(tmp_path / "n")]) == 0
    side = json.loads((tmp_path / "n" / "0_0.json").read_text())
    assert side["config"] is None and side["defended"] is False     # the sidecar records what the call did
    assert main(["generate", "a cat", *FAST, "--smoothing-stage", "unet", "--n", "3",
                 "--out", str(tmp_path / "u")]) == 0
    assert json.loads((tmp_path / "u" / "0_0.json").read_text())["smoothing_stage"] == "unet"


def test_img2img_from_the_cli(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(init)
    assert main(["generate", "a cat", *FAST, "--image", str(init), "--strength", "0.5",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "0_0.png").is_file()


@pytest.mark.parametrize("extra,match", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--height", "60"], "multiple of 8"),
    (["--sigma0", "-1"], "sigma0"),
    (["--concept", "nope"], "unknown concept"),
    (["--model", "no-such-org/no-such-model-xyz"], "local diffusers folder"),
    (["--unet", "/nonexistent/unet.safetensors"], "unet"),
])
def test_generate_errors_write_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert main(["generate", "a cat", *FAST, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and match in err and "\n" not in err
    assert not out.exists() or not any(out.iterdir())


def test_csv_without_prompt_column(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("case_number,text\n1,a cat\n")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(tmp_path / "o")]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err


# -- hardening, second pass (issue 28) -----------------------------------------------------------------------


@pytest.mark.parametrize("extra,match", [
    (["--guidance", "-50"], "--guidance must be >= 0 and <= 50, got -50"),
    (["--guidance", "51"], "--guidance must be >= 0 and <= 50"),
    (["--steps", "1001"], "--steps must be >= 1 and <= 1000"),
    (["--n", "102"], "n must be >= 1 and <= 101"),
    (["--strength", "0"], "--strength must be > 0 and <= 1"),
    # issue 28's audit: these were memory-allocation tracebacks after the model had loaded
    (["--images-per-prompt", "100000"], "--images-per-prompt must be >= 1 and <= 64"),
    (["--height", "800000"], "--height must be >= 8 and <= 4096"),
])
def test_out_of_bounds_numbers_are_refused_before_anything_is_written(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert main(["generate", "a cat", *FAST, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and match in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("content,match", [
    # a stray quote opens a field that swallows the next rows: refused naming the line, no prompt lost
    ('case_number,prompt,evaluation_seed\n1,"a cat,1\n2,a dog,2\n3,a bird",3\n4,a fish,4\n',
     "line 2: a quoted field runs on to line 4"),
    ('case_number,prompt\n1,"a cat" on a mat\n', "line 2: malformed CSV"),
    ('case_number,prompt\n1,"a cat\n', "line 2: malformed CSV"),
    ("case_number,prompt\n1,a cat, on a mat\n", "line 2: 3 fields but the header has 2"),
    ("case_number,prompt,evaluation_guidance\n1,a cat,-3\n", "row 2: column 'evaluation_guidance' must be >= 0"),
    ("case_number,prompt\n1\u202egnp.,a cat\n", "control or format character"),
    ("case_number,prompt\nab\u200bc,a cat\n", "control or format character"),
    ("prompt,prompt\na cat,a dog\n", "line 1: the header names column 'prompt' more than once"),
])
def test_bad_prompt_csvs_are_one_line_naming_the_line(tmp_path, capsys, content, match):
    csv, out = tmp_path / "p.csv", tmp_path / "out"
    csv.write_text(content, encoding="utf-8")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and match in err and "\n" not in err
    assert not out.exists()


def test_a_multiline_quoted_prompt_is_still_one_prompt(tmp_path):
    from amsmooth.prompts import read_prompt_csv

    csv = tmp_path / "p.csv"    # I2P and COCO have prompts with line breaks: a legitimate quoted field
    csv.write_text('case_number,prompt,evaluation_seed\n1,"let it rain,\nlet it pour",5\n2,a dog,6\n')
    cases = read_prompt_csv(csv)
    assert [(c.case_number, c.prompt) for c in cases] == [("1", "let it rain,\nlet it pour"), ("2", "a dog")]


def test_unicode_line_separators_do_not_split_a_text_prompt_file(tmp_path):
    from amsmooth.prompts import read_prompts_file

    path = tmp_path / "p.txt"
    path.write_text("a cat\u2028on a mat\r\na dog\u0085in the rain\n\na bird\u2029x\x0cy\n", encoding="utf-8")
    assert [c.prompt for c in read_prompts_file(path)] == ["a cat\u2028on a mat", "a dog\u0085in the rain",
                                                           "a bird\u2029x\x0cy"]


def test_an_empty_prompt_argument_is_refused_and_an_empty_csv_prompt_is_reported(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a cat", "  ", *FAST, "--out", str(out)]) == 2
    assert "PROMPT argument 2 is empty" in capsys.readouterr().err and not out.exists()
    csv = tmp_path / "p.csv"
    csv.write_text("case_number,prompt\n2259,a man\n2260,\n")       # as the published I2P set has one
    with pytest.warns(UserWarning, match=r"1 case\(s\) with an empty prompt \(case 2260\)"):
        from amsmooth.prompts import read_prompt_csv

        assert [c.prompt for c in read_prompt_csv(csv)] == ["a man", ""]


def test_disk_full_while_saving_an_image_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out"
    monkeypatch.setattr("amsmooth.io.os.fsync", full)
    assert main(["generate", "a cat", *FAST, "--out", str(out)]) == 2
    errors = [ln for ln in capsys.readouterr().err.split("\n") if "amsmooth: error:" in ln]   # after the bar
    assert len(errors) == 1 and "cannot write" in errors[0] and "No space left on device" in errors[0]
    assert list(out.iterdir()) == []


def bar_counts(err: str) -> list[tuple[int, int]]:
    """Every ``done/total`` the progress bar printed."""
    import re

    return [(int(a), int(b)) for a, b in re.findall(r"generate:.*?\|\s*(\d+)/(\d+)", err)]


def test_progress_bar_ends_at_its_total_on_pndm_and_img2img(tmp_path, capsys):
    """Issue 28: the tiny model's PNDM runs more U-Net steps than --steps and the bar overran its total (e.g.
    6/4); img2img runs fewer. The bar's total is the steps the scheduler really runs."""
    import copy

    from amsmooth.loading import load_pipeline

    scheduler = copy.deepcopy(load_pipeline("tiny").scheduler)
    scheduler.set_timesteps(2)
    pndm_steps = len(scheduler.timesteps)
    assert pndm_steps > 2                                   # PNDM's warm-up: the case this test is about
    assert main(["generate", "a cat", "a dog", *FAST, "--out", str(tmp_path / "a")]) == 0
    counts = bar_counts(capsys.readouterr().err)
    assert counts and all(n <= total for n, total in counts) and counts[-1] == (2 * pndm_steps, 2 * pndm_steps)
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(init)
    assert main(["generate", "a cat", *FAST, "--steps", "8", "--image", str(init), "--strength", "0.5",
                 "--out", str(tmp_path / "b")]) == 0
    counts = bar_counts(capsys.readouterr().err)
    assert counts and all(n <= total for n, total in counts) and counts[-1][0] == counts[-1][1] < 8


def test_positional_prompts_and_a_prompt_file_cannot_share_case_numbers(tmp_path, capsys):
    csv = tmp_path / "p.txt"
    csv.write_text("a dog\na bird\n")
    out = tmp_path / "out"
    assert main(["generate", "a cat", "a cow", "--prompts-file", str(csv), *FAST, "--out", str(out)]) == 2
    assert "overwrite each other" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--guidance", "nan"), ("--guidance", "inf"), ("--strength", "nan"),
                                        ("--sigma0", "nan"), ("--k", "-inf"), ("--seed", str(2**64)),
                                        ("--seed", "-1"), ("--seed", "1e30"), ("--seed", "inf")])
def test_generate_refuses_non_finite_numbers_and_bad_seeds(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    assert main(["generate", "a cat", *FAST, f"{flag}={value}", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert flag in err and not out.exists()
