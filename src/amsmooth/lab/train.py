"""Train the lab model: a pixel-space U-Net on rendered scenes, conditioned on frozen MiniLM caption embeddings.

DDPM training (ε-prediction, cosine schedule, uniform timesteps, Min-SNR-γ loss weighting — Hang et al. 2023,
"Efficient Diffusion Training via Min-SNR Weighting Strategy") with 10 % caption dropout for classifier-free
guidance, AdamW with warm-up and cosine decay, an exponential moving average of the weights (the EMA weights are
the ones saved), seeded (one ``torch.Generator`` for every draw) and resumable from ``DIR/checkpoint.*``.
The caption embeddings are computed once (the encoder is frozen) and cached with the rendered images.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AmsmoothError
from . import world as W
from .captions import training_captions
from .model import attention_width, lab_text_encoder, new_unet, scheduler_config


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2200
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    images: int = 10000
    concept_share: float = 0.2
    cond_dropout: float = 0.1
    ema_decay: float = 0.995
    seed: int = 0
    snr_gamma: float | None = 5.0     # Min-SNR-γ weight min(SNR, γ) / SNR on the ε loss; None: plain MSE
    attention_heads: int = 2          # the U-Net's `attention_head_dim` (diffusers' name for the head count)
    checkpoint_every: int = 100

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.images < self.batch_size:
            raise AmsmoothError("need steps ≥ 1, batch size ≥ 1 and at least one batch of images")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AmsmoothError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.cond_dropout < 1 or not 0 <= self.ema_decay < 1 or not 0 < self.concept_share <= 0.5:
            raise AmsmoothError("cond dropout and EMA decay must be in [0, 1), concept share in (0, 0.5]")
        if self.snr_gamma is not None and not (math.isfinite(self.snr_gamma) and self.snr_gamma > 0):
            raise AmsmoothError(f"Min-SNR gamma must be a positive number, got {self.snr_gamma}")
        width = attention_width()
        if self.attention_heads < 1 or width % self.attention_heads:
            raise AmsmoothError(f"attention heads must divide the attention width {width}, got {self.attention_heads}")


def build_data(settings: TrainSettings, encoder) -> dict[str, torch.Tensor]:  # noqa: ANN001 - TextEncoder
    """Rendered images ``[N, 3, 32, 32]`` uint8, caption index ``[N]``, embeddings ``[U, L, D]`` float16 of the
    U distinct captions, and the empty prompt's embedding ``[L, D]``."""
    caps = list(training_captions(settings.images, settings.seed, settings.concept_share))
    texts = sorted({c.text for c in caps})
    index = {t: i for i, t in enumerate(texts)}
    images = np.stack([W.render(c.scene) for c in caps]).transpose(0, 3, 1, 2)
    embeds = torch.cat([encoder.encode(texts[s:s + 256]).half() for s in range(0, len(texts), 256)])
    return {"images": torch.from_numpy(np.ascontiguousarray(images)),
            "caption": torch.tensor([index[c.text] for c in caps]),
            "embeds": embeds, "uncond": encoder.encode([""])[0].half()}


def _lr(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    return s.lr * 0.5 * (1 + math.cos(math.pi * (step - s.warmup) / max(1, s.steps - s.warmup)))


class Trainer:
    """One training run in ``out``; ``run()`` resumes from the last checkpoint there."""

    def __init__(self, out: str | Path, settings: TrainSettings) -> None:
        from diffusers import DDPMScheduler


        settings.check()
        self.out, self.s = Path(out), settings
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self.encoder = lab_text_encoder()
        self.unet = self.fresh_unet().train()
        self.ema = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.noise = DDPMScheduler.from_config(scheduler_config())
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.step, self.losses, self.seconds = 0, [], 0.0

    def _check_settings(self) -> None:
        f = self.out / "settings.json"
        mine = asdict(self.s)
        if f.exists():
            theirs = json.loads(f.read_text())
            diff = [k for k in mine if k != "checkpoint_every" and theirs.get(k) != mine[k]]
            if diff:
                raise AmsmoothError(f"{self.out} holds a run with other settings ({diff[0]} = {theirs.get(diff[0])}"
                                    f", now {mine[diff[0]]}); use another --out")
        else:
            f.write_text(json.dumps(mine, indent=2))

    def data(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        f = self.out / "data.safetensors"
        if f.exists():
            return load_file(str(f))
        data = build_data(self.s, self.encoder)
        save_file(data, str(f))
        return data

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        tensors = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            tensors.update({f"opt.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)) for k, v in st.items()})
        tensors["generator"] = self.gen.get_state()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.out / "checkpoint.tmp"))
        meta = {"step": self.step, "losses": self.losses, "seconds": self.seconds,
                "param_groups": opt["param_groups"]}
        (self.out / "checkpoint.json.tmp").write_text(json.dumps(meta))
        (self.out / "checkpoint.tmp").replace(self.out / "checkpoint.safetensors")
        (self.out / "checkpoint.json.tmp").replace(self.out / "checkpoint.json")

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        f = self.out / "checkpoint.safetensors"
        if not f.exists():
            return
        t = load_file(str(f))
        meta = json.loads((self.out / "checkpoint.json").read_text())
        self.unet.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("unet.")})
        self.ema = {k[4:]: v for k, v in t.items() if k.startswith("ema.")}
        state: dict[int, dict] = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.gen.set_state(t["generator"])
        self.step, self.losses, self.seconds = meta["step"], meta["losses"], meta["seconds"]

    # ------------------------------------------------------------------ training
    def train_step(self, data: dict[str, torch.Tensor]) -> float:
        s, g = self.s, self.gen
        idx = torch.randint(0, data["images"].shape[0], (s.batch_size,), generator=g)
        x0 = data["images"][idx].float() / 127.5 - 1.0
        cond = data["embeds"][data["caption"][idx]].float()
        drop = torch.rand(s.batch_size, generator=g) < s.cond_dropout
        cond[drop] = data["uncond"].float()
        t = torch.randint(0, self.noise.config.num_train_timesteps, (s.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        pred = self.unet(self.noise.add_noise(x0, eps, t), t, encoder_hidden_states=cond).sample
        loss = (self.loss_weights(t) * ((pred - eps) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in self.opt.param_groups:
            group["lr"] = _lr(self.step, s)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for k, v in self.unet.state_dict().items():
                self.ema[k].mul_(s.ema_decay).add_(v.detach(), alpha=1 - s.ema_decay) if v.is_floating_point() \
                    else self.ema[k].copy_(v)
        return float(loss.detach())

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights ``[B]`` for timesteps ``t`` ``[B]``: Min-SNR-γ, min(SNR, γ) / SNR, for
        ε-prediction (SNR = ᾱ / (1 − ᾱ)); ones without ``snr_gamma``."""
        if self.s.snr_gamma is None:
            return torch.ones(t.shape)
        abar = self.noise.alphas_cumprod[t]
        snr = abar / (1 - abar)
        return snr.clamp(max=self.s.snr_gamma) / snr

    def run(self, progress: bool = True) -> Path:
        """Train to ``settings.steps`` (resuming if possible); save the EMA U-Net to ``out/unet``."""
        from tqdm.auto import tqdm

        data = self.data()
        self.load_checkpoint()
        bar = tqdm(total=self.s.steps, initial=self.step, disable=not progress, desc="lab train", unit="step")
        window: list[float] = []
        while self.step < self.s.steps:
            t0 = time.perf_counter()
            window.append(self.train_step(data))
            self.step += 1
            self.seconds += time.perf_counter() - t0
            bar.update(1)
            if self.step % self.s.checkpoint_every == 0 or self.step == self.s.steps:
                self.losses.append([self.step, float(np.mean(window))])
                bar.set_postfix(loss=f"{np.mean(window):.4f}")
                window = []
                self.save_checkpoint()
        bar.close()
        return self.export()

    def fresh_unet(self) -> torch.nn.Module:
        """A newly initialised U-Net of this run's architecture (the shipped config with its head count)."""
        return new_unet(self.s.seed, attention_head_dim=self.s.attention_heads)

    def export(self) -> Path:
        unet = self.fresh_unet()
        unet.load_state_dict(self.ema)
        folder = self.out / "unet"
        unet.save_pretrained(str(folder), safe_serialization=True)
        (self.out / "train.json").write_text(json.dumps(
            {"settings": asdict(self.s), "steps_done": self.step, "train_seconds": round(self.seconds, 1),
             "torch_threads": torch.get_num_threads(), "losses": self.losses,
             "parameters": sum(p.numel() for p in unet.parameters())}, indent=2))
        return folder
