"""The lab trainer: Min-SNR-γ weights, settings checks, seeded and resumable runs, the exported architecture."""
from __future__ import annotations

import json

import pytest
import torch

from amsmooth.errors import AmsmoothError
from amsmooth.lab.train import Trainer, TrainSettings

TINY = {"images": 16, "batch_size": 4, "checkpoint_every": 2}


def test_min_snr_weights_follow_the_formula(tmp_path) -> None:
    trainer = Trainer(tmp_path / "run", TrainSettings(**TINY, steps=2, snr_gamma=5.0))
    t = torch.tensor([0, 100, 500, 900, 999])
    abar = trainer.noise.alphas_cumprod[t]
    snr = abar / (1 - abar)
    w = trainer.loss_weights(t)
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 0.01 and w[-1] == 1.0          # clean timesteps are down-weighted, noisy ones kept
    plain = Trainer(tmp_path / "plain", TrainSettings(**TINY, steps=2, snr_gamma=None))
    assert torch.equal(plain.loss_weights(t), torch.ones(5))


@pytest.mark.parametrize(("field", "value", "words"), [
    ("snr_gamma", 0.0, "Min-SNR gamma"), ("snr_gamma", float("nan"), "Min-SNR gamma"),
    ("attention_heads", 3, "attention heads"), ("lr", -1.0, "learning rate"), ("steps", 0, "steps"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, field, value, words) -> None:
    with pytest.raises(AmsmoothError, match=words) as e:
        Trainer(tmp_path / "run", TrainSettings(**{**TINY, "steps": 2, field: value}))
    assert "\n" not in str(e.value) and not (tmp_path / "run" / "settings.json").exists()


def test_a_resumed_run_gives_the_bytes_of_a_straight_run(tmp_path, monkeypatch) -> None:
    s = TrainSettings(**TINY, steps=4, attention_heads=4)
    straight = Trainer(tmp_path / "a", s).run(progress=False)
    step = Trainer.train_step

    def interrupted(self, data):  # the run is stopped during its third step
        if self.step == 2:
            raise KeyboardInterrupt
        return step(self, data)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "b", s).run(progress=False)
    monkeypatch.setattr(Trainer, "train_step", step)
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 2
    resumed = Trainer(tmp_path / "b", s).run(progress=False)
    a = (straight / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (resumed / "diffusion_pytorch_model.safetensors").read_bytes()
    assert json.loads((straight / "config.json").read_text())["attention_head_dim"] == 4
    report = json.loads((tmp_path / "a" / "train.json").read_text())
    assert report["steps_done"] == 4 and report["settings"]["snr_gamma"] == 5.0


def test_another_settings_run_in_the_same_folder_is_refused(tmp_path) -> None:
    Trainer(tmp_path / "run", TrainSettings(**TINY, steps=2))
    with pytest.raises(AmsmoothError, match="other settings"):
        Trainer(tmp_path / "run", TrainSettings(**TINY, steps=2, snr_gamma=None))
