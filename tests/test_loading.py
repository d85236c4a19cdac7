"""Loading pipelines and unlearned weights: every accepted file kind, the CompVis/LDM conversion, and the errors."""
from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file

from _cli_errors import one_line_error
from amsmooth.errors import AmsmoothError
from amsmooth.loading import load_pipeline, load_text_encoder_weights, load_unet_weights, resolve_device
from amsmooth.models.tiny import tiny_clip_text_model, tiny_components, tiny_pipeline

# ------------------------------------------------------------------------------------------------ helpers


def assert_same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    got, want = module.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_FIXED_TO_LDM = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                 "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def ldm_key(key: str, config) -> str:
    """The CompVis/LDM name of a diffusers U-Net key: diffusers' convert_diffusers_to_original_stable_diffusion.py
    tables, generalised from SD's 4 blocks × 2 layers to any number of blocks and ``layers_per_block``."""
    n = config["layers_per_block"] + 1  # LDM input/output slots per block (resnets + down/upsampler)
    has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    for hf, sd in _FIXED_TO_LDM.items():
        if key.startswith(hf):
            return sd + key[len(hf):]
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda i, j, r: f"input_blocks.{n * i + j + 1}.0.{res(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda i, j, r: f"input_blocks.{n * i + j + 1}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.(0)\.conv\.(.*)", lambda i, _, r: f"input_blocks.{n * (i + 1)}.0.op.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda i, j, r: f"output_blocks.{n * i + j}.0.{res(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda i, j, r: f"output_blocks.{n * i + j}.1.{r}"),
        (r"up_blocks\.(\d+)\.upsamplers\.(0)\.(.*)",
         lambda i, _, r: f"output_blocks.{n * i + n - 1}.{2 if has_attn[i] else 1}.{r}"),
        (r"mid_block\.resnets\.(\d+)\.()(.*)", lambda j, _, r: f"middle_block.{2 * j}.{res(r)}"),
        (r"mid_block\.attentions\.(0)\.()(.*)", lambda _, __, r: f"middle_block.1.{r}"),
    ]
    for pattern, name in rules:
        m = re.fullmatch(pattern, key)
        if m:
            a, b, rest = m.groups()
            return name(int(a), int(b) if b else 0, rest)
    raise AssertionError(f"no LDM name for {key}")


def res(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def ldm_state_dict(unet: torch.nn.Module, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    out = {prefix + ldm_key(k, unet.config): v.clone() for k, v in unet.state_dict().items()}
    assert len(out) == len(unet.state_dict()), "LDM names must be distinct"
    return out


@pytest.fixture
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def unet1():
    return tiny_components(seed=1)["unet"]


# ------------------------------------------------------------------------------------------------ U-Net files


def test_seed_one_differs(pipe, unet1):
    """Guard: the checks below would pass vacuously if the two tiny U-Nets were equal."""
    assert not torch.equal(pipe.unet.conv_in.weight, unet1.conv_in.weight)


@pytest.mark.parametrize("layout", ["pipeline", "bare"])
def test_unet_from_diffusers_folder(pipe, unet1, tmp_path, layout):
    unet1.save_pretrained(tmp_path / "unet" if layout == "pipeline" else tmp_path)
    load_unet_weights(pipe.unet, str(tmp_path))
    assert_same_weights(pipe.unet, unet1)


def test_unet_from_safetensors(pipe, unet1, tmp_path):
    save_file(unet1.state_dict(), tmp_path / "esd-unet.safetensors")
    load_unet_weights(pipe.unet, str(tmp_path / "esd-unet.safetensors"))
    assert_same_weights(pipe.unet, unet1)


@pytest.mark.parametrize("nested", [False, True])
def test_unet_from_pt_state_dict(pipe, unet1, tmp_path, nested):
    state = unet1.state_dict()
    torch.save({"state_dict": state, "global_step": 7} if nested else state, tmp_path / "unet.pt")
    load_unet_weights(pipe.unet, str(tmp_path / "unet.pt"))
    assert_same_weights(pipe.unet, unet1)


@pytest.mark.parametrize("form", ["prefixed", "whole-model-nested", "unprefixed"])
def test_unet_from_compvis_layout_round_trips_exactly(pipe, unet1, tmp_path, form):
    ldm = ldm_state_dict(unet1, prefix="" if form == "unprefixed" else "model.diffusion_model.")
    assert any(k.endswith("input_blocks.1.1.proj_in.weight") for k in ldm)  # really the LDM layout
    if form == "whole-model-nested":  # a CompVis .ckpt: VAE and CLIP keys beside the U-Net's, under state_dict
        ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(3)
        ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.zeros(3)
        ldm = {"state_dict": ldm, "global_step": 1000}
    torch.save(ldm, tmp_path / "esd-compvis.ckpt")
    load_unet_weights(pipe.unet, str(tmp_path / "esd-compvis.ckpt"))
    assert_same_weights(pipe.unet, unet1)


def _sd_layout_unet(seed: int, linear: bool):
    """SD 1.x (conv proj_in) / 2.x (linear proj_in) block layout — 4 blocks, 2 layers each — with tiny widths."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(block_out_channels=(8, 16, 32, 32), layers_per_block=2, norm_num_groups=4,
                                    cross_attention_dim=16, attention_head_dim=2, use_linear_projection=linear)


@pytest.mark.parametrize("linear", [False, True], ids=["sd1-layout", "sd2-layout"])
def test_compvis_conversion_with_sd_block_layout(tmp_path, linear):
    target, source = _sd_layout_unet(0, linear), _sd_layout_unet(1, linear)
    ldm = ldm_state_dict(source)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm  # SD's upsampler slots
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm
    save_file(ldm, tmp_path / "sd.safetensors")
    load_unet_weights(target, str(tmp_path / "sd.safetensors"))
    assert_same_weights(target, source)


def test_compvis_keys_with_no_place_are_an_error(pipe, unet1, tmp_path):
    ldm = ldm_state_dict(unet1)
    ldm["model.diffusion_model.extra_block.weight"] = torch.zeros(2)
    save_file(ldm, tmp_path / "odd.safetensors")
    before = snapshot(pipe.unet)
    with pytest.raises(AmsmoothError, match=r"1 CompVis/LDM keys have no place.*extra_block"):
        load_unet_weights(pipe.unet, str(tmp_path / "odd.safetensors"))
    assert_unchanged(pipe.unet, before)


# ------------------------------------------------------------------------------------------------ U-Net errors


def test_vae_state_dict_is_rejected_and_unet_unchanged(pipe, tmp_path):
    save_file(tiny_components(seed=1)["vae"].state_dict(), tmp_path / "vae.safetensors")
    before = snapshot(pipe.unet)
    with pytest.raises(AmsmoothError) as e:
        load_unet_weights(pipe.unet, str(tmp_path / "vae.safetensors"))
    msg = str(e.value)
    assert "vae.safetensors" in msg and "missing keys such as" in msg and "unexpected such as" in msg
    assert "\n" not in msg
    assert_unchanged(pipe.unet, before)


def _other_size_unet():
    from diffusers import UNet2DConditionModel

    cfg = dict(tiny_components()["unet"].config)
    cfg["block_out_channels"] = [16, 64]
    return UNet2DConditionModel.from_config(cfg)


@pytest.mark.parametrize("kind", ["safetensors", "compvis", "folder"])
def test_unet_of_another_size_is_rejected_and_unet_unchanged(pipe, tmp_path, kind):
    other = _other_size_unet()
    if kind == "safetensors":
        path = tmp_path / "small.safetensors"
        save_file(other.state_dict(), path)
        expect = r"shape mismatch at conv_in.weight: file has \(16, 4, 3, 3\), pipeline expects \(32, 4, 3, 3\)"
    elif kind == "compvis":
        path = tmp_path / "small.ckpt"
        torch.save(ldm_state_dict(other), path)
        expect = r"\(CompVis/LDM layout\) does not fit .*shape mismatch at conv_in.weight"
    else:
        path = tmp_path
        other.save_pretrained(path)
        expect = r"config differs from the pipeline's in 1 fields, such as block_out_channels"
    before = snapshot(pipe.unet)
    with pytest.raises(AmsmoothError, match=expect):
        load_unet_weights(pipe.unet, str(path))
    assert_unchanged(pipe.unet, before)


def test_pickle_with_python_objects_is_refused(pipe, tmp_path):
    torch.save({"conv_in.weight": torch.zeros(1), "args": argparse.Namespace(lr=1e-5)}, tmp_path / "esd.pt")
    before = snapshot(pipe.unet)
    with pytest.raises(AmsmoothError, match=r"esd.pt holds Python objects besides tensors "
                                            r"\(it needs argparse.Namespace\) and is not unpickled"):
        load_unet_weights(pipe.unet, str(tmp_path / "esd.pt"))
    assert_unchanged(pipe.unet, before)


def test_non_tensor_entries_and_other_objects_are_refused(pipe, tmp_path):
    torch.save({"conv_in.weight": torch.zeros(1), "lr": 1e-5}, tmp_path / "a.pt")
    with pytest.raises(AmsmoothError, match="not a flat state dict: 1 entries are not tensors, such as lr"):
        load_unet_weights(pipe.unet, str(tmp_path / "a.pt"))
    torch.save([torch.zeros(1)], tmp_path / "b.pt")
    with pytest.raises(AmsmoothError, match="holds a list, not a state dict"):
        load_unet_weights(pipe.unet, str(tmp_path / "b.pt"))
    (tmp_path / "c.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AmsmoothError, match="cannot read .*c.safetensors as safetensors"):
        load_unet_weights(pipe.unet, str(tmp_path / "c.safetensors"))


def test_missing_or_unsupported_paths(pipe, tmp_path):
    with pytest.raises(AmsmoothError, match="weights not found: .*nope.pt"):
        load_unet_weights(pipe.unet, str(tmp_path / "nope.pt"))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(AmsmoothError, match="unsupported weights file"):
        load_unet_weights(pipe.unet, str(tmp_path / "w.npz"))
    with pytest.raises(AmsmoothError, match="folder has neither unet/config.json nor config.json"):
        load_unet_weights(pipe.unet, str(tmp_path))


def test_hub_unet_offline_and_not_cached(pipe):
    with pytest.raises(AmsmoothError, match=r"offline .* not in the Hugging Face cache.*local diffusers folder"):
        load_unet_weights(pipe.unet, "nobody-amsmooth/no-such-unet/unet", local_files_only=True)


# ------------------------------------------------------------------------------------------------ text encoder


@pytest.fixture(scope="module")
def clip1():
    return tiny_clip_text_model(seed=1)


def test_text_encoder_from_clip_folder(pipe, clip1, tmp_path):
    assert not torch.equal(pipe.text_encoder.get_input_embeddings().weight, clip1.get_input_embeddings().weight)
    clip1.save_pretrained(tmp_path / "nudity_unlearned")
    load_text_encoder_weights(pipe, str(tmp_path / "nudity_unlearned"))
    assert_same_weights(pipe.text_encoder, clip1)


def test_text_encoder_from_pipeline_folder(pipe, clip1, tmp_path):
    clip1.save_pretrained(tmp_path / "text_encoder")
    load_text_encoder_weights(pipe, str(tmp_path))
    assert_same_weights(pipe.text_encoder, clip1)


@pytest.mark.parametrize(("suffix", "prefix"), [(".safetensors", ""), (".pt", "text_model."),
                                                (".ckpt", "cond_stage_model.transformer.text_model.")])
def test_text_encoder_from_state_dict(pipe, clip1, tmp_path, suffix, prefix):
    """As saved by transformers 5 (no prefix), transformers 4 (``text_model.``) and a CompVis checkpoint."""
    state = {prefix + k: v for k, v in clip1.state_dict().items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(77)[None]  # a buffer older transformers stored
    path = tmp_path / f"te{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    load_text_encoder_weights(pipe, str(path))
    assert_same_weights(pipe.text_encoder, clip1)


def test_wrong_text_encoder_is_rejected_and_unchanged(pipe, tmp_path):
    deeper = tiny_clip_text_model(seed=1, num_hidden_layers=3)
    save_file(deeper.state_dict(), tmp_path / "te.safetensors")
    deeper.save_pretrained(tmp_path / "deeper")
    before = snapshot(pipe.text_encoder)
    with pytest.raises(AmsmoothError, match=r"text encoder: 0 missing keys .* 16 unexpected such as "
                                            r"encoder.layers.2"):
        load_text_encoder_weights(pipe, str(tmp_path / "te.safetensors"))
    with pytest.raises(AmsmoothError, match=r"deeper does not fit the pipeline's text encoder"):
        load_text_encoder_weights(pipe, str(tmp_path / "deeper"))
    assert_unchanged(pipe.text_encoder, before)


def test_text_encoder_with_other_activation_is_rejected(pipe, tmp_path):
    tiny_clip_text_model(seed=1, hidden_act="gelu").save_pretrained(tmp_path)
    with pytest.raises(AmsmoothError, match=r"config differs .* hidden_act = 'gelu' \(pipeline: 'quick_gelu'\)"):
        load_text_encoder_weights(pipe, str(tmp_path))


# ------------------------------------------------------------------------------------------------ pipelines


def test_load_tiny_with_replacements(unet1, clip1, tmp_path):
    save_file(unet1.state_dict(), tmp_path / "u.safetensors")
    clip1.save_pretrained(tmp_path / "te")
    pipe = load_pipeline("tiny", unet=str(tmp_path / "u.safetensors"), text_encoder=str(tmp_path / "te"))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe._progress_bar_config == {"disable": True}
    assert_same_weights(pipe.unet, unet1)
    assert_same_weights(pipe.text_encoder, clip1)


def test_float16_casts_replacement_weights(unet1, tmp_path):
    torch.save(unet1.state_dict(), tmp_path / "u.pt")
    pipe = load_pipeline("tiny", unet=str(tmp_path / "u.pt"), dtype=torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
    assert_same_weights(pipe.unet, unet1)  # compared after casting the reference to float16


def test_local_diffusers_folder_and_img2img(unet1, tmp_path):
    tiny_pipeline(seed=2).save_pretrained(tmp_path / "sd")
    torch.save(ldm_state_dict(unet1), tmp_path / "esd.ckpt")
    pipe = load_pipeline(str(tmp_path / "sd"), unet=str(tmp_path / "esd.ckpt"), img2img=True,
                         dtype=torch.float16, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
    assert pipe.safety_checker is None and pipe._progress_bar_config == {"disable": True}
    assert_same_weights(pipe.unet, unet1)
    assert_same_weights(pipe.vae, tiny_components(seed=2)["vae"])


def test_tiny_img2img():
    assert type(load_pipeline("tiny", img2img=True)).__name__ == "StableDiffusionImg2ImgPipeline"


def test_unknown_id_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AmsmoothError) as e:
        load_pipeline("nobody-amsmooth/no-such-sd")
    msg = str(e.value)
    assert "offline" in msg and "hf download nobody-amsmooth/no-such-sd" in msg
    assert "local diffusers folder" in msg and "\n" not in msg


def test_model_that_is_neither_folder_nor_id(tmp_path):
    with pytest.raises(AmsmoothError, match="neither a local diffusers folder"):
        load_pipeline(str(tmp_path / "missing" / "sd"))
    with pytest.raises(AmsmoothError, match="cannot load model from .*model_index.json"):
        load_pipeline(str(tmp_path))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(AmsmoothError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(AmsmoothError, match="CUDA is not available"):
            resolve_device("cuda")


def test_hub_offline_one_rule_for_every_loader(monkeypatch):
    from amsmooth import encoders, loading
    from amsmooth.models import load as family_loading
    from amsmooth.models.hub import hub_offline

    assert hub_offline(True) is True and hub_offline(False) is False  # an explicit choice wins
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is True
    assert not any(hasattr(m, "_offline") for m in (encoders, loading, family_loading))  # no second copy


# ------------------------------------------------------------------------------------------------ AdvUnlearn layout

def _advunlearn_release(root, clip) -> None:
    """OPTML-Group/AdvUnlearn's layout: one CLIPTextModel folder per unlearned concept."""
    for name in ("nudity_unlearned", "vangogh_unlearned"):
        clip.save_pretrained(root / name)


def test_advunlearn_release_folder(pipe, clip1, tmp_path):
    _advunlearn_release(tmp_path / "AdvUnlearn", clip1)
    before = snapshot(pipe.text_encoder)
    with pytest.raises(AmsmoothError, match=r"holds several models in subfolders; pass one of them: "
                                            r".*AdvUnlearn/nudity_unlearned, .*AdvUnlearn/vangogh_unlearned"):
        load_text_encoder_weights(pipe, str(tmp_path / "AdvUnlearn"))
    assert_unchanged(pipe.text_encoder, before)
    load_text_encoder_weights(pipe, str(tmp_path / "AdvUnlearn" / "nudity_unlearned"))
    assert_same_weights(pipe.text_encoder, clip1)


def test_advunlearn_hub_id_through_generate(clip1, tmp_path, capsys):
    """`--text-encoder OPTML-Group/AdvUnlearn/nudity_unlearned` read from a Hub cache (offline), end to end, in a
    fresh process (the Hub cache folder is read when huggingface_hub is imported); a text encoder that does not fit
    is one line, exit 2, nothing written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import amsmooth
    from amsmooth.cli.main import main

    cache = tmp_path / "hub"
    repo = cache / "models--OPTML-Group--AdvUnlearn"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _advunlearn_release(repo / "snapshots" / commit, clip1)
    tiny_clip_text_model(seed=1, hidden_size=48, intermediate_size=37).save_pretrained(tmp_path / "wide")
    src = str(Path(amsmooth.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "OMP_NUM_THREADS": "1"}

    def argv(encoder: str, out: str) -> list[str]:
        return ["generate", "a photo", "--model", "tiny", "--text-encoder", encoder, "--steps", "1", "--defense",
                "none", "--device", "cpu", "--out", str(tmp_path / out)]

    done = subprocess.run([sys.executable, "-m", "amsmooth.cli.main", *argv("OPTML-Group/AdvUnlearn/nudity_unlearned",
                                                                             "img")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "img" / "0_0.json").read_text())["text_encoder"] == \
        "OPTML-Group/AdvUnlearn/nudity_unlearned"
    capsys.readouterr()
    assert main(argv(str(tmp_path / "wide"), "bad")) == 2
    assert "does not fit" in one_line_error(capsys)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())      # no image written
