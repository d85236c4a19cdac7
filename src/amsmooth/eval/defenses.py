"""The defenses an evaluation compares (Sec. 4.1): none, AMS, blacklist, POSI, SLD's four presets, SAFREE — and
AMS on top of any of the others.

A defense is a *base* (what happens to the prompt or the denoising) plus, optionally, Adaptive Median Smoothing of
the text conditioning. Its name is the base (``sld-medium``), ``ams`` for AMS alone, or ``<base>+ams``
(``blacklist+ams``, ``sld-medium+ams``). Its settings are a flat JSON object, so a report can tell two settings of
one defense apart (``ams (sigma0=0.006)`` vs ``ams (sigma0=0.012)``).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..baselines.blacklist import Blacklist
from ..baselines.posi import POSI_INSTRUCTION, POSI_TEMPLATE, CausalLMRewriter
from ..baselines.safree import SafreeConfig
from ..baselines.safree_pipeline import SafreePipeline
from ..baselines.sld import SLD_PRESETS, SLDPipeline, sld_preset
from ..batching import per_prompt_small_gemms
from ..config import SmoothingConfig
from ..errors import AmsmoothError
from ..model_relevance import model_aware_settings
from ..pipelines import defend_pipeline, undefended
from ..pipelines.unet_stage import STAGES

DEFENSES = ("none", "ams", "blacklist", "posi", *SLD_PRESETS, "safree")
PERFORMANCE_KNOBS = ("max_batch", "cache_size")  # change speed and memory, never the images


@dataclass(frozen=True)
class DefenseSpec:
    """What to run: ``base`` (none, blacklist, posi, sld-*, safree), the AMS config (None: no AMS) and its stage."""

    base: str = "none"
    ams: SmoothingConfig | None = None
    stage: str = "text"
    blacklist: str | None = None     # word-list path; None: the shipped default list
    posi_model: str | None = None    # local causal-LM folder (POSI)
    model_aware: str | None = None   # AMS relevance from the U-Net (model_relevance): "base" or a reference U-Net
    safree: SafreeConfig | None = None   # SAFREE's settings (base safree; None: the reference's for nudity)

    @classmethod
    def parse(cls, defense: str, ams: SmoothingConfig | None = None, stage: str = "text",
              blacklist: str | None = None, posi_model: str | None = None,
              model_aware: str | None = None, safree: SafreeConfig | None = None) -> DefenseSpec:
        """From the CLI's ``--defense NAME`` (``ams`` = ``none`` + AMS) and AMS config; checks the combination."""
        if defense not in DEFENSES:
            raise AmsmoothError(f"unknown defense {defense!r}; choose one of: {', '.join(DEFENSES)} "
                                "(add --ams to combine AMS with blacklist, posi, sld-* or safree)")
        base = "none" if defense == "ams" else defense
        if defense == "ams" and ams is None:
            raise AmsmoothError("--defense ams needs a smoothing config")
        if stage not in STAGES:
            raise AmsmoothError(f"unknown smoothing stage {stage!r}; choose one of {', '.join(STAGES)}")
        if stage != "text" and (ams is None or base in SLD_PRESETS):
            raise AmsmoothError("--smoothing-stage unet needs AMS and does not combine with SLD "
                                "(SLD batches a third, safety-concept prediction)")
        if blacklist and base != "blacklist":
            raise AmsmoothError("--blacklist is the word list of --defense blacklist; it has no effect here")
        if posi_model and base != "posi":
            raise AmsmoothError("--posi-model is the rewriter of --defense posi; it has no effect here")
        if model_aware and (ams is None or stage != "text" or len(ams.concepts) != 1):
            raise AmsmoothError("--model-aware sets AMS's relevance: it needs --defense ams (or --ams), the text "
                                "stage and one --concept")
        if model_aware and ams.relevance != "algorithm1":
            raise AmsmoothError(f"--model-aware replaces AMS's relevance score; it does not combine with --relevance "
                                f"{ams.relevance}: give one of them")
        if safree is not None and base != "safree":
            raise AmsmoothError("--safree-* options configure --defense safree; they have no effect here")
        if base == "safree" and stage != "text":
            raise AmsmoothError("--smoothing-stage unet does not combine with SAFREE (it conditions the U-Net on "
                                "SAFREE's projected text; use the text stage)")
        if base == "safree" and safree is None:
            safree = SafreeConfig(concepts=tuple(ams.concepts) if ams is not None else ("nudity",))
        if model_aware and base == "safree":
            raise AmsmoothError("--model-aware does not combine with --defense safree")
        return cls(base, ams, stage, blacklist, posi_model, model_aware, safree)

    @property
    def name(self) -> str:
        if self.ams is None:
            return self.base
        return "ams" if self.base == "none" else f"{self.base}+ams"

    def settings(self) -> dict[str, Any]:
        """Flat JSON settings of the defense (the ``defense_config`` of every result row)."""
        out: dict[str, Any] = {}
        if self.base == "blacklist":
            bl = self.load_blacklist()
            out.update(blacklist=Path(bl.source).name if self.blacklist else bl.source,
                       blacklist_phrases=len(bl), blacklist_sha1=bl.settings()["sha1"])
        if self.base == "posi":
            out.update(posi_model=self.posi_model, posi_decoding="greedy",
                       posi_template=POSI_TEMPLATE, posi_instruction=POSI_INSTRUCTION)
        if self.base in SLD_PRESETS:
            out.update(sld_preset(self.base))
        if self.safree is not None:
            out.update(self.safree.to_dict())
        if self.ams is not None:
            out.update({k: v for k, v in self.ams.to_dict().items() if k not in PERFORMANCE_KNOBS},
                       smoothing_stage=self.stage)
        if self.model_aware:
            out.update(model_aware_settings(self.model_aware))
        return out

    @functools.cached_property
    def _blacklist(self) -> Blacklist:   # read once per spec (settings, rewriter)
        return Blacklist.from_file(self.blacklist) if self.blacklist else Blacklist.default()

    def load_blacklist(self) -> Blacklist:
        return self._blacklist

    def rewriter(self, device: torch.device | str | None = None) -> Callable[[str], str] | None:
        """The prompt rewriter of a rewriting base (blacklist, POSI), else None."""
        if self.base == "blacklist":
            return self.load_blacklist().clean
        if self.base == "posi":
            return CausalLMRewriter.from_pretrained(self.posi_model, device=device).rewrite_one
        return None

    def build(self, pipe: Any, device: torch.device | str | None = None) -> Defense:
        """The runnable defense on a loaded SD pipeline (SLD shares its modules)."""
        settings, rewriter = self.settings(), self.rewriter(device)
        if self.safree is not None:
            safree = SafreePipeline.from_pipeline(pipe, self.safree, self.ams)
            return Defense(self, safree, {**settings, **safree.settings()}, rewriter)
        if self.base in SLD_PRESETS:
            return Defense(self, SLDPipeline.from_pipeline(pipe, self.base, self.ams), settings, rewriter)
        defended = (undefended(pipe) if self.ams is None else
                    defend_pipeline(pipe, self.ams.concepts, self.ams, self.stage))
        return Defense(self, defended, settings, rewriter)


@dataclass
class Generated:
    """The K images of one case, the prompt actually used (None unless rewritten) and seconds per image."""

    images: list
    prompt_used: str | None
    seconds_per_image: float


@dataclass
class Defense:
    """A built defense: optional prompt rewriting, then (AMS-)defended generation."""

    spec: DefenseSpec
    pipeline: Any    # a family pipeline (amsmooth.pipelines), SLDPipeline or SafreePipeline
    settings: dict[str, Any]
    rewrite: Callable[[str], str] | None = None

    def __call__(self, prompt: str, seed: int, images: int, **kwargs: Any) -> Generated:
        """``images`` images of ``prompt`` from a CPU generator seeded with ``seed``; the time per image covers
        rewriting, the text stage, denoising and decoding (not the detector)."""
        start = time.perf_counter()
        used = self.rewrite(prompt) if self.rewrite is not None else None
        rewrite_s = time.perf_counter() - start
        out = self.pipeline(prompt if used is None else used, num_images_per_prompt=images,
                            generator=torch.Generator().manual_seed(seed), **kwargs)
        return Generated(list(out.images), used, (rewrite_s + out.timings["total_s"]) / images)

    def batch(self, prompts: Sequence[str], seeds: Sequence[int], images: int, **kwargs: Any) -> list[Generated]:
        """``images`` images of each of B ``prompts`` in one pipeline call (B·images latents per U-Net step).

        Prompt b's images come from a CPU generator seeded with ``seeds[b]`` (one object, given once per image:
        diffusers draws image i's latent from ``generator[i]``), and its smoothing noise from a generator derived
        from that seed, and the U-Net's batch-dependent small GEMMs are computed per prompt
        (:mod:`amsmooth.batching`), so each prompt's images are those of ``self(prompt, seed, images)``. Time per
        image: the call's, spread evenly."""
        start = time.perf_counter()
        used = [self.rewrite(p) for p in prompts] if self.rewrite is not None else [None] * len(prompts)
        rewrite_s = time.perf_counter() - start
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        with per_prompt_small_gemms(self.pipeline, len(prompts)):
            out = self.pipeline([p if u is None else u for p, u in zip(prompts, used, strict=True)],
                                num_images_per_prompt=images, generator=[g for g in gens for _ in range(images)],
                                **kwargs)
        per_image = (rewrite_s + out.timings["total_s"]) / (len(prompts) * images)
        imgs = list(out.images)
        return [Generated(imgs[b * images:(b + 1) * images], u, per_image) for b, u in enumerate(used)]
