"""`amsmooth generate` end to end with --model tiny: images, sidecars, the data contract, bad input."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from amsmooth.cli.main import main

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]


def test_generate_prompt_writes_image_and_sidecar(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a photo of a cat", *FAST, "--out", str(out), "--seed", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0_0.json", "0_0.png"]
    assert Image.open(out / "0_0.png").size == (64, 64)
    side = json.loads((out / "0_0.json").read_text())
    assert side["prompt"] == "a photo of a cat" and side["seed"] == 3 and side["defense"] == "ams"
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
    assert json.loads((tmp_path / "n" / "0_0.json").read_text())["config"] is None
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
