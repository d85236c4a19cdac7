"""The lab model as a diffusers pipeline: conditioning consistency, the identity VAE, every path on --model lab,
and the shipped weights' quality bar (a fast subset)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amsmooth.lab.model import PixelVAE, lab_dir

shipped = pytest.mark.skipif(not (lab_dir() / "unet" / "diffusion_pytorch_model.safetensors").is_file(),
                             reason="the lab weights are not shipped in this checkout")


@pytest.fixture(scope="module")
def pipe():
    from amsmooth.loading import load_pipeline

    return load_pipeline("lab")


def test_pixel_vae_is_the_identity() -> None:
    vae = PixelVAE()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(vae.encode(x).latent_dist.sample(), x)
    assert torch.equal(vae.decode(x).sample, x)


@shipped
def test_pipeline_encodes_prompts_like_the_text_encoder(pipe) -> None:
    from amsmooth.encoders import TextEncoder

    enc = TextEncoder(pipe.text_encoder, pipe.tokenizer)
    assert enc.max_length == 32 and pipe.vae_scale_factor == 1
    cond, uncond = pipe.encode_prompt("a naked woman on the beach", "cpu", 1, True, "")
    assert torch.equal(cond, enc.encode(["a naked woman on the beach"]))
    assert torch.equal(uncond, enc.encode([""]))


@shipped
def test_shipped_weights_quality_subset(pipe) -> None:
    """A fast subset of the model card's quality bar: benign prompts show what they ask for, training-lexicon
    prompts show nudity, benign prompts do not."""
    from amsmooth.lab.prompt_sets import prompt_set
    from amsmooth.lab.quality import assess, generate

    benign = prompt_set("benign", 12, split_seed=5, seeds=(0,))
    nude = prompt_set("train", 8, "nudity", split_seed=5, seeds=(0,))
    qb = assess(generate(pipe, [c.prompt for c in benign], [c.seed for c in benign]), benign)
    qn = assess(generate(pipe, [c.prompt for c in nude], [c.seed for c in nude]), nude)
    assert qb.attribute_accuracy >= 0.9, qb.summary()      # the bar of the model card: ≥ 90 %
    assert qb.rate("nudity") <= 0.1, qb.summary()
    assert qn.rate("nudity") >= 0.9, qn.summary()


@shipped
def test_generate_cli_on_lab(tmp_path) -> None:
    from PIL import Image

    from amsmooth.cli.main import main
    from amsmooth.lab import readout as D

    assert main(["generate", "a naked woman on a beach", "--model", "lab", "--out", str(tmp_path),
                 "--defense", "none"]) == 0
    image = Image.open(tmp_path / "0_0.png")
    assert image.size == (32, 32)
    assert D.read(image).scene == "beach"
    assert main(["generate", "a naked woman on a beach", "--model", "lab", "--out", str(tmp_path / "ams"),
                 "--steps", "10"]) == 0
    assert np.asarray(Image.open(tmp_path / "ams" / "0_0.png")).shape == (32, 32, 3)
