"""SAFREE on a diffusers pipeline (SD 1.x/2.x, SDXL, SD3, Flux), optionally on top of Adaptive Median Smoothing.

A wrapper, not a fork: during one call it

- wraps the pipeline's own ``encode_prompt`` (the AMS-defended one when AMS is on) and replaces the conditional
  ``prompt_embeds`` it returns by SAFREE's projection (:mod:`.safree_text`);
- chains a ``callback_on_step_end`` that hands the pipeline the plain conditioning back, per prompt, after its
  last filtered step (self-validating filtering);
- for latent re-attention (U-Nets only), adds the plain prompt's rows to each U-Net batch through forward hooks
  and filters the skip features of the decoder blocks (:func:`amsmooth.baselines.safree.low_frequency_filter`),
  then drops those rows again.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import SmoothingConfig
from ..errors import AmsmoothError
from ..pipelines import defend_pipeline, family_of
from ..pipelines.mixin import DefendedMixin, execution_device
from ..pipelines.registry import as_defended
from .safree import SafreeConfig, low_frequency_filter
from .safree_text import TARGET, PromptFilter, SafreeText

SVF_DEFAULT = {"sd": True, "sdxl": False, "sd3": False, "flux": False}   # run_nudity.sh / the SDXL, SD3 pipelines
HAS_CFG = {"sd": True, "sdxl": True, "sd3": True, "flux": False}         # Flux-dev: guidance-distilled
UNET_FAMILIES = ("sd", "sdxl")
REFUSED = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "prompt_2", "prompt_3")


def _resolve(choice: str, default: bool) -> bool:
    return default if choice == "auto" else choice == "on"


@dataclass
class _CallState:
    """What one call shares between the prompt encoding, the step callback and the U-Net hooks."""

    prompts: list[str]
    filters: list[PromptFilter] = field(default_factory=list)
    plain: torch.Tensor | None = None          # [N, L, D] the conditional rows without SAFREE
    last_step: list[int | None] = field(default_factory=list)   # per row
    active: torch.Tensor | None = None         # [N] bool: row still conditioned on the projection
    encoded: bool = False
    seconds: float = 0.0
    rows: int = 0                              # the U-Net batch before the re-attention rows were added


class SafreePipeline:
    """SAFREE around a family pipeline (AMS-defended or not); callable like the family pipeline.

    ``pipe``: an amsmooth family pipeline (``amsmooth.pipelines``); use :meth:`from_pipeline` for a plain one."""

    def __init__(self, pipe: Any, config: SafreeConfig) -> None:
        family = family_of(pipe)
        if family is None or not isinstance(pipe, DefendedMixin):
            raise AmsmoothError(f"SAFREE wraps SD 1.x/2.x, SDXL, SD3 or Flux pipelines (amsmooth.pipelines); got "
                                f"{type(pipe).__name__}")
        self.pipe, self.config, self.family = pipe, config, family
        self.svf = _resolve(config.svf, SVF_DEFAULT[family])
        self.negative = _resolve(config.negative, HAS_CFG[family])
        if self.negative and not HAS_CFG[family]:
            raise AmsmoothError("SAFREE's keyword negative prompt does not carry over to Flux: Flux-dev is "
                                "guidance-distilled and has no unconditional branch (use --safree-negative auto/off)")
        if config.lra and family not in UNET_FAMILIES:
            raise AmsmoothError(f"SAFREE's latent re-attention filters U-Net skip features; the {family} pipeline "
                                "has a transformer without them (drop --safree-lra)")
        self.text = SafreeText.for_pipeline(pipe, family, config, self.svf)
        self.last_safree: dict | None = None

    @classmethod
    def from_pipeline(cls, pipe: Any, config: SafreeConfig, ams: SmoothingConfig | None = None) -> SafreePipeline:
        """SAFREE on ``pipe`` (a diffusers SD/SDXL/SD3/Flux pipeline), with AMS underneath when ``ams`` is given."""
        if family_of(pipe) is None:
            raise AmsmoothError(f"SAFREE wraps SD 1.x/2.x, SDXL, SD3 or Flux diffusers pipelines; got "
                                f"{type(pipe).__name__}")
        if ams is not None:
            target = defend_pipeline(pipe, ams.concepts, ams, "text")
        else:
            target = pipe.undefend() if isinstance(pipe, DefendedMixin) else as_defended(pipe)
        return cls(target, config)

    def settings(self) -> dict[str, Any]:
        """The configuration with the family's resolved choices (what ran)."""
        encoder = f"{TARGET[self.family].model} ({self.text.view.model_type})"
        return {**self.config.to_dict(), "safree_family": self.family, "safree_encoder": encoder,
                "safree_pooling": self.text.kind, "safree_svf_used": self.svf, "safree_negative_used": self.negative}

    @property
    def device(self) -> torch.device:
        return execution_device(self.pipe)

    # ------------------------------------------------------------------ generation
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, callback_on_step_end: Any = None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None, **kwargs: Any) -> Any:
        """Generate like the wrapped pipeline. Without ``negative_prompt`` the keywords joined by ", " are the
        negative prompt where the family has classifier-free guidance (the reference's). The output also carries
        ``safree`` (per prompt: tokens, flagged tokens, β, filtered steps) and ``timings``."""
        for name in REFUSED:
            if kwargs.get(name) is not None:
                raise AmsmoothError(f"{name} is not supported with SAFREE: it detects trigger tokens in the prompt "
                                    "text, so give prompts")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise AmsmoothError("no prompts to generate")
        if negative_prompt is None and self.negative:
            joined = ", ".join(self.config.keywords)
            negative_prompt = joined if isinstance(prompt, str) else [joined] * len(prompts)
        state = _CallState(prompts)
        user_inputs = list(getattr(callback_on_step_end, "tensor_inputs", None)      # diffusers' PipelineCallback
                           or callback_on_step_end_tensor_inputs or ["latents"])
        inputs = user_inputs + [k for k in ("prompt_embeds",) if k not in user_inputs]
        with self._encoding(state), self._re_attention(state):
            out = self.pipe(prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                            callback_on_step_end=self._callback(state, callback_on_step_end),
                            callback_on_step_end_tensor_inputs=inputs, **kwargs)
        info = [f.report() for f in state.filters]
        timings = dict(getattr(out, "timings", None) or self.pipe.last_defense["timings"])
        timings["text_s"] += state.seconds
        timings["denoise_decode_s"] = timings["total_s"] - timings["text_s"]
        timings["safree_s"] = state.seconds
        if not isinstance(out, tuple):
            out.safree, out.timings = info, timings
            out.relevance = getattr(out, "relevance", None) or []
        self.last_safree = {"safree": info, "timings": timings}
        return out

    @contextlib.contextmanager
    def _encoding(self, state: _CallState) -> Iterator[None]:
        """Within the block the pipeline's ``encode_prompt`` returns SAFREE's conditional embeddings."""
        original = self.pipe.encode_prompt
        slot, signature = TARGET[self.family], _diffusers_signature(self.pipe, "encode_prompt")

        def encode(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if state.encoded:                       # Flux encodes a true-CFG negative prompt with a second call
                return out
            state.encoded = True
            start = time.perf_counter()
            a = signature.bind(self.pipe, *args, **kwargs)
            a.apply_defaults()
            K = int(a.arguments.get("num_images_per_prompt") or 1)
            length = a.arguments.get(slot.length_arg) if slot.length_arg else None
            cond = out[0]
            if cond.shape[0] != K * len(state.prompts):
                raise AmsmoothError(f"SAFREE: {cond.shape[0]} conditioning rows for {len(state.prompts)} prompts "
                                    f"× {K} images")
            with torch.no_grad():
                state.filters = [self.text.analyse(p, cond[b * K:(b + 1) * K], length)
                                 for b, p in enumerate(state.prompts)]
            state.plain = cond
            state.last_step = [f.last_step for f in state.filters for _ in range(K)]
            state.active = torch.ones(cond.shape[0], dtype=torch.bool)
            projected = torch.cat([f.projected for f in state.filters])
            for f in state.filters:
                f.projected = None
            state.seconds = time.perf_counter() - start
            return (projected, *out[1:])

        self.pipe.encode_prompt = encode            # an instance attribute shadows the class's method
        try:
            yield
        finally:
            del self.pipe.encode_prompt

    def _callback(self, state: _CallState, user: Any) -> Any:
        """``callback_on_step_end``: the user's (if any), then the plain embedding for rows past their last
        filtered step."""
        def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            result = dict(user(pipe, i, t, kwargs) or {}) if user is not None else {}
            done = [r for r, last in enumerate(state.last_step) if last is not None and last == i]
            if done and state.plain is not None:
                embeds = result.get("prompt_embeds", kwargs["prompt_embeds"]).clone()
                N = state.plain.shape[0]
                rows = torch.tensor(done)
                embeds[embeds.shape[0] - N + rows] = state.plain[rows].to(embeds.device, embeds.dtype)
                result["prompt_embeds"] = embeds
                state.active[rows] = False
            return result
        return on_step_end

    # ------------------------------------------------------------------ latent re-attention
    @contextlib.contextmanager
    def _re_attention(self, state: _CallState) -> Iterator[None]:
        """Within the block (``lra`` on), each U-Net call also runs the plain prompt's rows and filters the
        projected rows' skip features against theirs (free_lunch_utils.py's SafeGuard_Low_Fourier_filter) at the
        deepest decoder width (scale s1) and the next one (s2), FreeU's "first two stages"."""
        if not self.config.lra:
            yield
            return
        unet = self.pipe.unet
        widths = sorted(set(unet.config.block_out_channels), reverse=True)
        scales = {widths[0]: self.config.s1, **({widths[1]: self.config.s2} if len(widths) > 1 else {})}
        handles = [unet.register_forward_pre_hook(_extend(state), with_kwargs=True),
                   unet.register_forward_hook(_trim(state), with_kwargs=True)]
        handles += [block.register_forward_pre_hook(_filter_skips(state, scales, self.config.lra_window),
                                                    with_kwargs=True) for block in unet.up_blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            state.rows = 0


def _diffusers_signature(pipe: Any, name: str) -> inspect.Signature:
    """The signature of diffusers' own ``name`` method of ``pipe``'s class (amsmooth's override takes ``*args``)."""
    for klass in type(pipe).__mro__:
        if name in vars(klass) and not issubclass(klass, DefendedMixin):
            return inspect.signature(vars(klass)[name])
    raise AmsmoothError(f"{type(pipe).__name__} has no {name}")


def _extend(state: _CallState) -> Any:
    """U-Net pre-hook: append the plain prompt's rows (the conditional rows' latents, the plain conditioning)."""
    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        state.rows = 0
        if state.plain is None or state.active is None or not bool(state.active.any()):
            return args, kwargs
        if "encoder_hidden_states" not in kwargs:
            raise AmsmoothError("SAFREE re-attention: the U-Net was called without encoder_hidden_states=")
        sample = args[0] if args else kwargs["sample"]
        R, N = sample.shape[0], state.plain.shape[0]

        def ext(x: Any) -> Any:
            return torch.cat([x, x[R - N:]]) if torch.is_tensor(x) and x.ndim and x.shape[0] == R else x
        ehs = kwargs["encoder_hidden_states"]
        args = tuple(ext(a) for a in args)
        kwargs = {k: ({kk: ext(vv) for kk, vv in v.items()} if isinstance(v, dict) else ext(v))
                  for k, v in kwargs.items()}
        kwargs["encoder_hidden_states"] = torch.cat([ehs, state.plain.to(ehs.device, ehs.dtype)])
        state.rows = R
        return args, kwargs
    return hook


def _trim(state: _CallState) -> Any:
    """U-Net forward hook: drop the appended rows from the prediction."""
    def hook(_module: Any, _args: Any, _kwargs: Any, output: Any) -> Any:
        R, state.rows = state.rows, 0
        if not R:
            return output
        if isinstance(output, tuple):
            return (output[0][:R], *output[1:])
        output.sample = output.sample[:R]
        return output
    return hook


def _filter_skips(state: _CallState, scales: dict[int, float], window: int) -> Any:
    """Decoder-block pre-hook: filter the skip features each resnet will concatenate, by the width of the
    hidden state it meets (the block's input width for the first resnet, its output width after)."""
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        R = state.rows
        if not R or "res_hidden_states_tuple" not in kwargs:
            return None
        N, skips = state.plain.shape[0], list(kwargs["res_hidden_states_tuple"])
        rows, ref = slice(R - N, R), slice(R, R + N)
        inactive = ~state.active
        width = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[1]
        for k, resnet in enumerate(module.resnets):
            idx, scale = len(skips) - 1 - k, scales.get(width)
            if scale is not None:
                x = skips[idx]
                y = low_frequency_filter(x, rows, ref, scale, window)
                if bool(inactive.any()):
                    part = y[rows].clone()
                    part[inactive.to(x.device)] = x[rows][inactive.to(x.device)]
                    y[rows] = part
                skips[idx] = y
            width = resnet.out_channels
        kwargs["res_hidden_states_tuple"] = tuple(skips)
        return args, kwargs
    return hook
