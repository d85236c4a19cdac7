"""The model-facing work behind the API, done through the library: relevance (AdaptiveMedianSmoothing),
undefended vs defended images (the SD family class of amsmooth.pipelines, same seed) and the certificate
(amsmooth.certify).

Not thread-safe by design: the server runs every call on its single worker thread (``worker.WorkQueue``).
"""
from __future__ import annotations

import base64
import copy
import io
import threading
import time
from typing import Any

import numpy as np
import torch

from ..certify import certify, typical_token_distance
from ..concepts import BUILTIN, Concept, resolve_concept
from ..config import SmoothingConfig
from ..encoders import TextEncoder
from ..errors import AmsmoothError
from ..pipelines import FamilyDefense, undefended
from ..pipelines.registry import as_defended
from ..relevance import WordCache, is_high
from ..smoothing import AdaptiveMedianSmoothing

DEFENSES = {"both": ("none", "ams"), "ams": ("ams",), "none": ("none",)}


class Progress:
    """What the worker is doing now (task, done/total), readable from any thread for ``GET /status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None

    def start(self, task: str, total: int) -> None:
        with self._lock:
            self._state = {"task": task, "done": 0, "total": total, "started": time.time()}

    def advance(self, k: int = 1) -> None:
        with self._lock:
            if self._state is not None:
                self._state["done"] += k

    def finish(self) -> None:
        with self._lock:
            self._state = None

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if self._state is None:
                return None
            state = dict(self._state)
        state["elapsed_s"] = round(time.time() - state.pop("started"), 2)
        return state


def png_base64(image: Any) -> str:
    """A PIL image as base64 PNG (deterministic bytes for the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_difference(a: Any, b: Any) -> dict[str, float]:
    """How far the defended image is from the undefended one: mean |Δ| over RGB values (0–255) and the fraction
    of pixels whose colour changed at all."""
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    delta = np.abs(x - y)
    return {"mean_abs": float(delta.mean()), "changed_fraction": float((delta.max(axis=-1) > 0).mean())}


class DemoService:
    """One loaded pipeline, its concepts and the server's default settings; every method is one API call.

    ``config`` is the server's SmoothingConfig (its ``concepts`` are built-in names or .safetensors paths,
    resolved here, so a bad concept fails at start); requests override its fields through ``config_for`` and
    may name ``concept_names``: the server's concepts, then the other built-ins (built on first use).
    """

    def __init__(self, pipe: Any, config: SmoothingConfig, *, model: str, unet: str | None = None,
                 steps: int = 25, guidance: float = 7.5) -> None:
        self.pipe = pipe
        self.model, self.unet, self.steps, self.guidance = model, unet, steps, guidance
        self.plain, self.defended = undefended(pipe), as_defended(pipe)    # family classes sharing pipe's modules
        self.encoder = TextEncoder(pipe.text_encoder, pipe.tokenizer, name=type(pipe.text_encoder).__name__)
        self._concepts: dict[str, Concept] = {}
        names = []
        for spec in config.concepts:
            concept = resolve_concept(spec, self.encoder)
            self._concepts[concept.name] = concept
            names.append(concept.name)
        self.config = config.replace(concepts=tuple(names))
        self.concept_names = list(dict.fromkeys([*names, *BUILTIN]))   # fixed: read from the event loop too
        self._caches: dict[tuple[str, ...], WordCache] = {}
        self._states: dict[tuple, dict] = {}    # per (concepts, method): prepared data and calibrated scale
        self._typical: float | None = None
        self.progress = Progress()

    # ------------------------------------------------------------------ settings
    def config_for(self, overrides: dict[str, Any]) -> SmoothingConfig:
        """The server's settings with a request's overrides; unknown concept names are refused."""
        unknown = [c for c in overrides.get("concepts", ()) if c not in self.concept_names]
        if unknown:
            raise AmsmoothError(f"unknown concept {unknown[0]!r}; this server offers: "
                                f"{', '.join(self.concept_names)}")
        if "concepts" in overrides:
            overrides = {**overrides, "concepts": tuple(dict.fromkeys(overrides["concepts"]))}
        return self.config.replace(**overrides)

    def info(self) -> dict[str, Any]:
        """The model and default settings, for the page's controls."""
        return {"model": self.model, "unet": self.unet, "config": self.config.to_dict(),
                "concepts": self.concept_names, "steps": self.steps, "guidance": self.guidance}

    def smoothing(self, config: SmoothingConfig) -> AdaptiveMedianSmoothing:
        """AdaptiveMedianSmoothing for ``config``; the per-word relevance cache is kept per concept set (each
        method keys its own entries), the method's prepared state per concept set and method."""
        concepts = [self.concept(name) for name in config.concepts]
        ams = AdaptiveMedianSmoothing(self.encoder, concepts, config)
        ams.cache = self._caches.setdefault(config.concepts, ams.cache)
        ams.method_state = self._states.setdefault((config.concepts, config.relevance), ams.method_state)
        return ams

    def concept(self, name: str) -> Concept:
        """The concept called ``name``, resolved for the pipeline's encoder on first use."""
        if name not in self._concepts:
            self._concepts[name] = resolve_concept(name, self.encoder)
        return self._concepts[name]

    # ------------------------------------------------------------------ the three calls
    def relevance(self, prompt: str, config: SmoothingConfig) -> dict[str, Any]:
        """Per-token relevance and σ of ``prompt``; ``high`` marks σ ≥ 2σ0 as ``amsmooth relevance`` does."""
        self.progress.start("scoring tokens", 1)
        try:
            result = self.smoothing(config).relevance([prompt])[0]
        finally:
            self.progress.finish()
        for t in result["tokens"]:
            t["high"] = is_high(t["sigma"], config.sigma0)
        return {**result, "config": config.to_dict()}

    def generate(self, prompt: str, config: SmoothingConfig, seed: int, steps: int | None = None,
                 guidance: float | None = None, defense: str = "both") -> dict[str, Any]:
        """The undefended and/or defended image of ``prompt`` for the same seed, with the sidecar's fields."""
        steps = steps or self.steps
        guidance = self.guidance if guidance is None else guidance
        runs = DEFENSES[defense]
        self.progress.start(f"generating ({' + '.join(runs)})", self._denoising_steps(steps) * len(runs))
        images, pil, relevance = [], [], {}
        try:
            for name in runs:
                dp = self.plain if name == "none" else self.defended.use_defense(
                    FamilyDefense.from_smoothing(self.defended.encoder_views(), [self.smoothing(config)]))
                out = dp(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                         guidance_scale=guidance, callback_on_step_end=self._step)
                image = out.images[0]
                pil.append(image)
                images.append({"defense": name, "defended": out.defended, "png_base64": png_base64(image),
                               "width": image.width, "height": image.height, "timings": out.timings})
                relevance = out.relevance[0] if out.relevance else relevance
        finally:
            self.progress.finish()
        defended = "ams" in runs
        return {"prompt": prompt, "seed": seed, "guidance": guidance, "steps": steps, "model": self.model,
                "unet": self.unet, "smoothing_stage": "text" if defended else None,
                "config": config.to_dict() if defended else None,
                "tokens": [{"token": t["token"], "word": t["word"], "sim": t["sim"], "sigma": t["sigma"]}
                           for t in relevance.get("tokens", [])],
                "dropped": relevance.get("dropped", ""), "images": images,
                "difference": image_difference(*pil) if len(pil) == 2 else None}

    def certify(self, prompt: str, config: SmoothingConfig, seed: int, rho: float, samples: int,
                alpha: float) -> dict[str, Any]:
        """Theorem 3.2's certificate for ``prompt`` (bound, ratio, per-token radius), as ``certify --format json``."""
        ams = self.smoothing(config)
        self.progress.start("certifying", samples)
        try:
            cert = certify(ams, [prompt], rho, samples, alpha, torch.Generator().manual_seed(seed),
                           progress=self.progress.advance)[0]
        finally:
            self.progress.finish()
        if self._typical is None:
            self._typical = typical_token_distance(self.encoder.embedding.weight)
        return {**cert.to_dict(), "seed": seed, "config": config.to_dict(),
                "typical_token_distance": self._typical}

    def _denoising_steps(self, steps: int) -> int:
        """U-Net calls the scheduler makes for ``steps`` (PNDM adds warm-up steps), for the progress total."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)

    def _step(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        self.progress.advance()
        return {}

