"""One erasure as a typed request — method, model, texts, settings, output — and :func:`unlearn`, which runs it
and writes the U-Net (``.safetensors`` + JSON sidecar). ``amsmooth unlearn`` builds a request from its flags;
experiments (the lab table) build one directly::

    unlearn(UnlearnRequest("esd", "lab", erase=("naked", "nude"), settings=ESDSettings(method="x"),
                           out=Path("models/esd.safetensors")))
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..provenance import versions
from .esd import ESDSettings, check_texts, esd
from .output import check_output, save_unet
from .race import RACESettings, race
from .rece import RECESettings, rece
from .uce import UCESettings, uce

SETTINGS = {"esd": ESDSettings, "uce": UCESettings, "rece": RECESettings, "race": RACESettings}


@dataclass(frozen=True)
class UnlearnRequest:
    """Erase ``erase`` from ``model``'s U-Net (or from ``unet``, a U-Net to start from) with ``method``."""

    method: str                            # esd | uce | rece | race
    model: str                             # Hugging Face id, diffusers folder, 'tiny', 'lab'
    erase: tuple[str, ...]
    settings: Any                          # the method's settings: ESDSettings, UCESettings, RECESettings, RACESettings
    out: Path
    unet: str | None = None
    guide: tuple[str, ...] | None = None   # uce, rece: one text for all, or one per erase text (None: the empty prompt)
    preserve: tuple[str, ...] = ()         # uce, rece
    pretrained_esd: str | None = None      # race: the ESD U-Net to start from (else an ESD stage runs first)
    seed: int = 0                          # esd, race
    device: str = "auto"
    concept: str | None = None             # the built-in concept the erase texts came from (sidecar only)
    budget: str = "reference"              # reference | quick (sidecar only: the settings already say it)
    overwrite: bool = False
    progress: bool = True

    def check(self) -> Path:
        """Everything cheap, before the model is loaded; returns the checked output path."""
        if self.method not in SETTINGS:
            raise AmsmoothError(f"unknown erasure method {self.method!r}; choose one of: {', '.join(SETTINGS)}")
        if not isinstance(self.settings, SETTINGS[self.method]):
            raise AmsmoothError(f"{self.method} takes {SETTINGS[self.method].__name__}, got "
                                f"{type(self.settings).__name__}")
        check_texts(self.erase, "--erase")
        if self.preserve:
            check_texts(self.preserve, "--preserve")
        if self.guide and len(self.guide) not in (1, len(self.erase)):
            raise AmsmoothError(f"{len(self.guide)} --guide texts for {len(self.erase)} erase texts; give one "
                                "--guide, or one per --erase")
        if self.pretrained_esd:
            from ..models.weights import source_kind

            source_kind(self.pretrained_esd)          # a missing file fails before the model is loaded
        self.settings.validate()
        return check_output(self.out, self.overwrite)


def unlearn(request: UnlearnRequest) -> dict[str, Any]:
    """Run the erasure and write ``request.out`` (+ its JSON sidecar); returns the sidecar's record."""
    from ..models.hub import quiet_libraries
    from ..models.load import load_pipeline, resolve_device

    out = request.check()
    device = resolve_device(request.device)
    quiet_libraries()
    started = time.perf_counter()
    pipe = load_pipeline(request.model, unet=request.unet, device=device)
    loaded = time.perf_counter()
    info: dict[str, Any] = {"method": request.method, "model": request.model, "unet": request.unet,
                            "concept": request.concept, "erase": list(request.erase), "budget": request.budget,
                            "settings": request.settings.to_dict(), "device": str(device), "dtype": "float32"}
    state, extra = RUNNERS[request.method](request, pipe)
    info.update(extra)
    done = time.perf_counter()
    original = pipe.unet.state_dict()
    changed = sorted(k for k, v in state.items() if not torch.equal(v, original[k].to("cpu")))
    info.update(changed_tensors=len(changed), changed_parameters=sum(state[k].numel() for k in changed),
                timings={"load_s": round(loaded - started, 3), "unlearn_s": round(done - loaded, 3)},
                versions=versions())
    iterations = len(extra.get("losses", [])) + len(extra.get("esd_losses", []))
    if iterations:
        info["timings"]["per_iteration_s"] = round((done - loaded) / iterations, 4)
    save_unet(state, out, info)
    return info


def _progress_bar(request: UnlearnRequest, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=not request.progress)


def _run_esd(request: UnlearnRequest, pipe: Any) -> tuple[dict, dict]:
    settings, losses = request.settings, []
    bar = _progress_bar(request, settings.iterations, f"ESD-{settings.method}")

    def progress(it: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")

    state = esd(pipe, list(request.erase), settings, torch.Generator().manual_seed(request.seed), progress=progress)
    bar.close()
    return state, {"seed": request.seed, "losses": losses}


def _run_race(request: UnlearnRequest, pipe: Any) -> tuple[dict, dict]:
    from ..models.weights import load_unet_weights

    settings, start = request.settings, None
    if request.pretrained_esd:
        unet = copy.deepcopy(pipe.unet)
        load_unet_weights(unet, request.pretrained_esd)
        start = unet.state_dict()
    bar = _progress_bar(request, settings.iterations + (0 if start else settings.esd.iterations), "ESD → RACE")

    def progress(stage: str, it: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{loss:.4g}")

    state, log = race(pipe, list(request.erase), settings, torch.Generator().manual_seed(request.seed), start=start,
                      progress=progress)
    bar.close()
    return state, {"seed": request.seed, "pretrained_esd": request.pretrained_esd, "esd_losses": log.esd_losses,
                   "losses": log.losses, "attack_losses": log.attack_losses}


def _guide(request: UnlearnRequest) -> list[str] | None:
    return list(request.guide) if request.guide else None


def _run_uce(request: UnlearnRequest, pipe: Any) -> tuple[dict, dict]:
    preserve = list(request.preserve)
    state = uce(pipe, list(request.erase), guide=_guide(request), preserve=preserve, settings=request.settings)
    return state, {"seed": None, "guide": _guide(request), "towards_uncond": not request.guide, "preserve": preserve}


def _run_rece(request: UnlearnRequest, pipe: Any) -> tuple[dict, dict]:
    preserve = list(request.preserve)
    state, history = rece(pipe, list(request.erase), guide=_guide(request), preserve=preserve,
                          settings=request.settings)
    return state, {"seed": None, "guide": _guide(request), "towards_uncond": not request.guide, "preserve": preserve,
                   "epochs": [h.to_dict() for h in history]}


RUNNERS = {"esd": _run_esd, "uce": _run_uce, "rece": _run_rece, "race": _run_race}
