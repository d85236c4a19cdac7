"""The lab model: a pixel-space diffusers U-Net conditioned through the frozen, pretrained MiniLM text encoder,
assembled as an ordinary diffusers ``StableDiffusionPipeline`` so that every path of the package runs on it.

The "VAE" is the identity (:class:`PixelVAE`, scale factor 1): the U-Net denoises 32×32 RGB images directly.
The text encoder is ``all-MiniLM-L6-v2`` (a BERT; the one real pretrained encoder available offline) at 32
tokens, with the attention mask used both by ``TextEncoder`` and by the diffusers pipeline's own prompt encoding,
so that both give the same conditioning.
"""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from ..encoders import TextEncoder, minilm_folder
from ..errors import AmsmoothError
from ..models.assembly import assemble_pipeline
from ..models.hub import quiet_libraries

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

LAB_MAX_LENGTH = 32   # tokens, [CLS] and [SEP] included
LAB_SIZE = 32         # pixels
LAB_STEPS = 25        # default DDIM steps: best benign accuracy on the calibration split (MODEL_CARD.md)


def lab_dir() -> Path:
    """Folder of the shipped lab model (U-Net config and weights, scheduler config, model card)."""
    return Path(str(resources.files("amsmooth") / "data" / "lab"))


def unet_config() -> dict[str, Any]:
    """The lab U-Net's architecture (2.0 M parameters)."""
    return json.loads((lab_dir() / "unet" / "config.json").read_text())


def attention_width() -> int:
    """Channels of the lab U-Net's attention blocks (every cross-attention block and the mid block): a head
    count must divide it."""
    cfg = unet_config()
    widths = {w for w, kind in zip(cfg["block_out_channels"], cfg["down_block_types"], strict=True)
              if kind.startswith("CrossAttn")} | {cfg["block_out_channels"][-1]}
    return math.gcd(*widths)


def scheduler_config() -> dict[str, Any]:
    return json.loads((lab_dir() / "scheduler" / "scheduler_config.json").read_text())


class PixelVAE(ModelMixin, ConfigMixin):
    """The identity autoencoder of a pixel-space model: ``encode(x).latent_dist`` is x (zero variance) and
    ``decode(z)`` is z, with ``scaling_factor`` 1 and one block (so the pipeline's ``vae_scale_factor`` is 1)."""

    @register_to_config
    def __init__(self, channels: int = 3, block_out_channels: tuple[int, ...] = (3,),
                 scaling_factor: float = 1.0, latent_channels: int = 3) -> None:
        super().__init__()
        # No weights: this buffer only carries the device and dtype that diffusers asks a model for.
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """x ``[B, 3, H, W]`` in [-1, 1] → a distribution whose sample and mode are x."""
        dist = DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> DecoderOutput | tuple:
        """z ``[B, 3, H, W]`` → the same tensor, as an image in [-1, 1]."""
        return DecoderOutput(sample=z) if return_dict else (z,)


def lab_text_encoder():  # noqa: ANN201 - amsmooth.TextEncoder
    """The lab's ``TextEncoder``: MiniLM at 32 tokens, attention mask on (also in the diffusers pipeline)."""
    from transformers import AutoTokenizer, BertModel


    quiet_libraries()
    folder = minilm_folder()
    model = BertModel.from_pretrained(folder).eval()
    model.config.use_attention_mask = True
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=LAB_MAX_LENGTH, use_fast=True)
    return TextEncoder(model, tokenizer, max_length=LAB_MAX_LENGTH, name="lab-minilm")


def new_unet(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A freshly initialised lab U-Net (seeded); ``overrides`` replace entries of the shipped config."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config({**unet_config(), **overrides})


def load_lab_unet(folder: str | Path | None = None) -> torch.nn.Module:
    """The trained lab U-Net from ``folder`` (default: the shipped weights)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder) if folder else lab_dir() / "unet"
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise AmsmoothError(f"no lab weights in {folder}: train them with `amsmooth lab train --out DIR`")
    return UNet2DConditionModel.from_pretrained(str(folder)).eval()


def lab_pipeline(img2img: bool = False, unet_folder: str | Path | None = None,
                 untrained: bool = False) -> DiffusionPipeline:
    """The lab model as a diffusers ``StableDiffusionPipeline`` (or the img2img one), 32 px, DDIM sampler.

    ``untrained``: a freshly initialised U-Net instead of the shipped weights (when the caller replaces them).
    """
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline


    enc = lab_text_encoder()
    unet = new_unet().eval() if untrained else load_lab_unet(unet_folder)
    parts = {"unet": unet, "vae": PixelVAE(), "text_encoder": enc.model, "tokenizer": enc.tokenizer,
             "scheduler": DDIMScheduler.from_config(scheduler_config())}
    return assemble_pipeline(StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline, parts)
