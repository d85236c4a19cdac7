"""``DefendedMixin``: turns a diffusers text-to-image pipeline class into the same class with AMS.

Only prompt encoding is overridden. ``encode_prompt`` scores the prompt per text encoder (``FamilyDefense``),
then calls the pipeline's *own* ``encode_prompt`` on the prompt repeated n times — CFG off, one batch — with a
forward hook on each encoder's token embeddings that adds that encoder's noise, takes the element-wise median of
every conditioning output over the n samples (sequence and pooled alike), and hands the medians back to the
pipeline's ``encode_prompt`` as ``prompt_embeds`` / ``pooled_prompt_embeds``, which adds the plain negative
embeddings, repeats for ``num_images_per_prompt`` and unscales LoRA as usual. So ``clip_skip``, the text
encoders' LoRA scale, textual inversion, offload hooks, ``max_sequence_length`` … apply exactly as without the
defense. ``__call__`` only captures the image generator (to derive the smoothing noise's own generator) and
attaches ``relevance`` / ``timings`` / ``defended`` to the output object.

A call with ``prompt_embeds`` (diffusers' API for precomputed conditioning) cannot be defended: AMS scores and
perturbs the prompt's tokens, and embeddings carry no text. Such a call runs undefended, says so once per
pipeline (``UndefendedCall``) and returns ``defended = False``; ``defend(…, strict=True)`` refuses it instead
(issue 28: it ran undefended without a word). docs/method.md, "What the defense covers".
"""
from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..concepts import Concept
from ..config import SmoothingConfig
from ..errors import AmsmoothError
from ..smoothing import median_smooth
from .defense import FamilyDefense, Plan
from .unet_stage import STAGES, unet_median_smoothing
from .views import EncoderSlot, EncoderView


def execution_device(pipe: Any) -> torch.device:
    """The device ``pipe``'s models compute on (where latents and prompt embeddings must be created).

    diffusers has no public name for it: ``DiffusionPipeline._execution_device``, the property diffusers' own
    ``__call__`` uses, follows CPU and group offloading, where the public ``pipe.device`` says cpu. This is the one
    place amsmooth reads it from outside a pipeline class; pipelines without it answer ``pipe.device``.
    """
    if hasattr(pipe, "_execution_device"):
        return pipe._execution_device
    return pipe.device


def derive_generator(generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Generator | None:
    """The smoothing noise's own CPU generator, seeded from the image generator's seed (so the image latents are
    drawn exactly as without the defense)."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    if g is None:
        return None
    return torch.Generator().manual_seed((g.initial_seed() ^ 0x5EED5EED) & (2**63 - 1))


def smoothing_generators(generator: torch.Generator | Sequence[torch.Generator] | None, prompts: int
                         ) -> torch.Generator | list[torch.Generator] | None:
    """Per-prompt smoothing generators from the image generators: a list of ``prompts × K`` image generators (one
    per image, as diffusers takes them) gives prompt b the generator derived from its first image's; one image
    generator gives one derived generator (every prompt then draws as if alone with it)."""
    if not isinstance(generator, (list, tuple)):
        return derive_generator(generator)
    if len(generator) % prompts:
        raise AmsmoothError(f"{len(generator)} generators for {prompts} prompts; give one, or one per image")
    per = len(generator) // prompts
    return [derive_generator(generator[b * per]) for b in range(prompts)]


@dataclass
class CallState:
    """What one ``__call__`` shares with the ``encode_prompt`` it triggers."""

    generator: torch.Generator | None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    encoded: bool = False
    relevance: list = field(default_factory=list)
    text_s: float = 0.0


def _smoothing_generators(generator: Any, prompt: Any) -> torch.Generator | list[torch.Generator] | None:
    """The smoothing noise's generator(s): with a list of image generators (one per image) and a list of B
    prompts, one per prompt, derived from its first image's generator (so a prompt's h_0.5 is the same alone or
    in any batch); otherwise one, derived from the (first) image generator."""
    if isinstance(generator, (list, tuple)) and isinstance(prompt, (list, tuple)) and prompt:
        return smoothing_generators(generator, len(prompt))
    return derive_generator(generator)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UndefendedCall(UserWarning):
    """A defended pipeline was called in a way the defense cannot act on (``prompt_embeds``): it ran undefended."""


BYPASS = ("the defense needs the prompt's text and precomputed prompt_embeds have none: pass prompt=… instead "
          "of prompt_embeds")


class DefendedMixin:
    """Put first in the bases of a diffusers pipeline subclass; set SLOTS and OUTPUTS for the family.

    SLOTS: the family's text encoders in ``encode_prompt``'s order. OUTPUTS: ``encode_prompt`` result index →
    the argument that takes that (conditional) tensor back. CFG_ARG: the classifier-free-guidance flag of
    ``encode_prompt`` (None when it has none). UNET_STAGE: whether U-Net-level smoothing is available.
    """

    SLOTS: tuple[EncoderSlot, ...] = ()
    OUTPUTS: dict[int, str] = {0: "prompt_embeds"}
    CFG_ARG: str | None = "do_classifier_free_guidance"
    UNET_STAGE: bool = False

    _ams: FamilyDefense | None = None
    _ams_stage: str = "text"
    _ams_spec: tuple | None = None
    _ams_call: CallState | None = None
    _warned_undefended: bool = False
    refuse_undefended: bool = False
    last_defense: dict | None = None

    # ------------------------------------------------------------------ set-up
    def defend(self, concepts: Sequence[str | Concept] = ("nudity",), config: SmoothingConfig | None = None,
               stage: str = "text", strict: bool = False) -> DefendedMixin:
        """Defend this pipeline against ``concepts`` (built-in names, pairs CSVs, concept/bundle files); returns
        self. Directions and relevance use the text encoders as they are now (load LoRAs first). ``strict``:
        refuse a call the defense cannot act on (``prompt_embeds``) instead of running it undefended."""
        self._check_stage(stage)
        config = config or SmoothingConfig()
        defense = FamilyDefense.build(self.encoder_views(), list(concepts) or list(config.concepts), config)
        return self.use_defense(defense, stage, strict, concepts)

    def use_defense(self, defense: FamilyDefense, stage: str = "text", strict: bool = False,
                    concepts: Sequence[str | Concept] | None = None) -> DefendedMixin:
        """Defend with a ready :class:`FamilyDefense` over this pipeline's encoders (e.g.
        :meth:`FamilyDefense.from_smoothing`: a server's smoothing with its caches); returns self. ``concepts``:
        what ``from_pipe`` re-resolves for a pipeline with other encoders (default the defense's own)."""
        self._check_stage(stage)
        if concepts is None:
            concepts = next(iter(defense.ams.values())).concepts
        self._ams, self._ams_stage = defense, stage
        self._ams_spec = (tuple(concepts), defense.config, stage, strict)
        self.refuse_undefended = strict
        return self

    def _check_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise AmsmoothError(f"unknown smoothing stage {stage!r}; choose one of {', '.join(STAGES)}")
        if stage == "unet" and not self.UNET_STAGE:
            raise AmsmoothError(f"--smoothing-stage unet is implemented for SD 1.x/2.x U-Nets only, not "
                                f"{type(self).__name__}")

    def undefend(self) -> DefendedMixin:
        """Remove the defense: the pipeline runs exactly as its diffusers class."""
        self._ams = self._ams_spec = None
        return self

    def encoder_views(self) -> list[EncoderView]:
        """An :class:`EncoderView` per text encoder the pipeline has (missing optional ones are skipped)."""
        views = []
        for slot in self.SLOTS:
            model, tok = getattr(self, slot.model, None), getattr(self, slot.tokenizer, None)
            if model is not None and tok is not None:
                views.append(EncoderView(model, tok, slot))
        return views

    @property
    def defense(self) -> FamilyDefense | None:
        """The :class:`FamilyDefense` in use (None: undefended)."""
        return self._ams

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pipe``; a defended source pipeline passes its defense on (re-built if the new
        pipeline has other text encoders)."""
        new = super().from_pipe(pipeline, **kwargs)  # type: ignore[misc]
        spec = getattr(pipeline, "_ams_spec", None)
        if spec is not None and isinstance(new, DefendedMixin):
            same = all(getattr(new, s.model, None) is getattr(pipeline, s.model, None) for s in cls.SLOTS)
            if same and getattr(pipeline, "SLOTS", None) == cls.SLOTS:
                new._ams, new._ams_stage, new._ams_spec = pipeline._ams, spec[2], spec
                new.refuse_undefended = spec[3]
            else:
                new.defend(*spec)
        return new

    # ------------------------------------------------------------------ generation
    def __call__(self, *args: Any, smoothing_generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        """The diffusers pipeline call. The smoothing noise comes from ``smoothing_generator`` (default: derived
        from ``generator``'s seed, so the image latents are drawn exactly as without the defense). The output (when
        ``return_dict``) also carries ``relevance`` (per prompt), ``timings`` (text_s, denoise_decode_s,
        total_s) and ``defended`` (False when undefended or given ``prompt_embeds``); ``last_defense`` keeps them
        for ``return_dict=False``."""
        base = super().__call__  # type: ignore[misc]
        bound = inspect.signature(base).bind_partial(*args, **kwargs).arguments
        prompt, negative = bound.get("prompt"), bound.get("negative_prompt")
        if isinstance(prompt, list) and isinstance(negative, list) and len(negative) != len(prompt):
            raise AmsmoothError(f"{len(negative)} negative prompts for {len(prompt)} prompts; give one or one each")
        bypassed = self._ams is not None and bound.get("prompt_embeds") is not None
        if bypassed and self.refuse_undefended:
            raise AmsmoothError(f"refusing an undefended call (strict): {BYPASS}")
        if bypassed and not self._warned_undefended:
            self._warned_undefended = True
            warnings.warn(UndefendedCall(f"{type(self).__name__} called with prompt_embeds runs UNDEFENDED: "
                                         f"{BYPASS} (defend(..., strict=True) refuses such calls); said once per "
                                         "pipeline, each output records defended=False"), stacklevel=2)
        state = CallState(smoothing_generator or _smoothing_generators(bound.get("generator"), prompt))
        device = self._execution_device  # type: ignore[attr-defined]
        self._ams_call = state
        sync(device)
        t0 = time.perf_counter()
        try:
            with state.stack:
                out = base(*args, **kwargs)
        finally:
            self._ams_call = None
        sync(device)
        total = time.perf_counter() - t0
        timings = {"text_s": state.text_s, "denoise_decode_s": total - state.text_s, "total_s": total}
        defended = self._ams is not None and not bypassed
        self.last_defense = {"relevance": state.relevance, "timings": timings, "defended": defended}
        if not isinstance(out, tuple):                        # attributes, not keys: to_tuple() is unchanged
            out.relevance, out.timings, out.defended = state.relevance, timings, defended
        return out

    # ------------------------------------------------------------------ the override
    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        """The pipeline's ``encode_prompt`` with the conditional embeddings median-smoothed (see module doc).

        Plain when undefended, when ``prompt_embeds`` are given, and for every ``encode_prompt`` after the first
        within one call (Flux encodes its true-CFG negative prompt through ``encode_prompt`` too)."""
        base = super().encode_prompt  # type: ignore[misc]
        state = self._ams_call
        if self._ams is None:
            return base(*args, **kwargs)
        a = inspect.signature(base).bind(*args, **kwargs)
        a.apply_defaults()
        a = dict(a.arguments)
        if a.get("prompt_embeds") is not None or a.get("prompt") is None or (state is not None and state.encoded):
            return base(*args, **kwargs)
        if state is not None:
            state.encoded = True
        device = self._execution_device  # type: ignore[attr-defined]
        sync(device)
        t0 = time.perf_counter()
        prompts = [a["prompt"]] if isinstance(a["prompt"], str) else list(a["prompt"])
        if not prompts:
            raise AmsmoothError("no prompts to encode")
        plan = self._ams.plan(prompts, *self._slot_inputs(a, prompts))
        generator = state.generator if state is not None else None
        if self._ams_stage == "unet":
            out = self._unet_stage(a, plan, generator, base)
        elif plan.all_zero:
            out = base(**a)                       # σ ≡ 0: every sample equals the plain conditioning
        else:
            noisy = self._noisy(a, plan, generator, base)
            n, B = self._ams.config.n, len(prompts)
            med = {name: median_smooth(t.reshape(n, B, *t.shape[1:])) for name, t in noisy.items()}
            out = base(**{**a, **med})
        sync(device)
        if state is not None:
            state.relevance = self._ams.report(plan)
            state.text_s = time.perf_counter() - t0
        return out

    def _slot_inputs(self, a: dict, prompts: list[str]) -> tuple[dict, dict]:
        """Per encoder: (its prompts as given, as its tokenizer sees them after textual-inversion conversion),
        and its tokenization length for this call."""
        from diffusers.loaders import TextualInversionLoaderMixin

        texts, lengths = {}, {}
        for v in self._ams.views:
            slot = v.slot
            raw = a.get(slot.prompt_arg) or a["prompt"]
            raw = [raw] * len(prompts) if isinstance(raw, str) else list(raw)
            seen = raw
            if slot.converts_ti and isinstance(self, TextualInversionLoaderMixin):
                seen = self.maybe_convert_prompt(raw, v.tokenizer)
            texts[slot.name] = (raw, seen)
            if slot.length_arg and a.get(slot.length_arg):
                lengths[slot.name] = int(a[slot.length_arg])
        return texts, lengths

    def _noisy(self, a: dict, plan: Plan, generator: torch.Generator | None, base: Any) -> dict[str, torch.Tensor]:
        """The pipeline's own conditioning of the n noisy copies: name → ``[n·B, …]`` (chunked past max_batch)."""
        cfg, B = self._ams.config, len(plan.prompts)
        noises = self._ams.noise(plan, cfg.n, generator)
        rows = cfg.n * B
        call = {**a, "num_images_per_prompt": 1, "prompt_embeds": None}
        for k in list(call):
            if k.startswith(("negative_", "pooled_prompt_embeds")):
                call[k] = None
        if self.CFG_ARG:
            call[self.CFG_ARG] = False
        given = {v.slot.prompt_arg: plan.slots[i].raw for i, v in enumerate(self._ams.views)
                 if a.get(v.slot.prompt_arg) is not None}
        given["prompt"] = plan.prompts
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.OUTPUTS.values()}
        for s in range(0, rows, cfg.max_batch):
            sl = slice(s, min(s + cfg.max_batch, rows))
            for arg, texts in given.items():
                call[arg] = [texts[r % B] for r in range(sl.start, sl.stop)]
            with contextlib.ExitStack() as hooks:
                for v, noise in zip(self._ams.views, noises, strict=True):
                    hooks.enter_context(v.noise_hook(noise[sl]))
                out = base(**call)
            for idx, name in self.OUTPUTS.items():
                parts[name].append(out[idx])
        return {name: torch.cat(t) if len(t) > 1 else t[0] for name, t in parts.items()}

    def _unet_stage(self, a: dict, plan: Plan, generator: torch.Generator | None, base: Any) -> Any:
        """Naive smoothing (Sec. 3.2): plain conditioning; within the call the U-Net's conditional prediction is
        the median of its predictions under the n noisy conditionings."""
        out = base(**a)
        state = self._ams_call
        if plan.all_zero:
            return out
        if state is None:
            raise AmsmoothError("U-Net-stage smoothing acts inside a pipeline call; call the pipeline, not "
                                "encode_prompt")
        n, B = self._ams.config.n, len(plan.prompts)
        conds = self._noisy(a, plan, generator, base)["prompt_embeds"]
        conds = conds.reshape(n, B, *conds.shape[1:]).repeat_interleave(int(a.get("num_images_per_prompt") or 1), 1)
        unet = self.unet  # type: ignore[attr-defined]
        state.stack.enter_context(unet_median_smoothing(unet, conds.to(out[0].device, out[0].dtype),
                                                        self._ams.config.max_batch))
        return out
