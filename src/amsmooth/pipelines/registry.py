"""Which defended class belongs to a loaded diffusers pipeline, and building it from that pipeline's modules."""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

from ..concepts import Concept
from ..config import SmoothingConfig
from ..errors import AmsmoothError
from . import flux, sd, sd3, sdxl
from .mixin import DefendedMixin

# family → its module (its text-encoder slots and CLASSES: diffusers class → defended class)
_FAMILY_MODULES = {"sd": sd, "sdxl": sdxl, "sd3": sd3, "flux": flux}


def _registry() -> dict[type, tuple[str, type]]:
    """diffusers class → (family, defended class)."""
    return {base: (name, cls) for name, module in _FAMILY_MODULES.items() for base, cls in module.CLASSES.items()}


FAMILIES = ("sd", "sdxl", "sd3", "flux")


def _lookup(pipe: Any) -> tuple[str, type] | None:
    table = _registry()
    for klass in type(pipe).__mro__:
        if klass in table:
            return table[klass]
        if isinstance(klass, type) and issubclass(klass, DefendedMixin) and klass is not DefendedMixin:
            for entry in table.values():
                if entry[1] is klass:
                    return entry
    return None


def defended_class(pipe: Any) -> type | None:
    """The defended class for ``pipe``'s diffusers class (exact class or a subclass), else None."""
    found = _lookup(pipe)
    return None if found is None else found[1]


def family_of(pipe: Any) -> str | None:
    """``sd``, ``sdxl``, ``sd3``, ``flux`` or None."""
    found = _lookup(pipe)
    return None if found is None else found[0]


def as_defended(pipe: Any, cls: type | None = None) -> Any:
    """``cls.from_pipe(pipe)`` sharing every module, keeping the U-Net's ``sample_size`` (diffusers raises
    a value below 64 in SD constructors, on the shared config)."""
    cls = cls or defended_class(pipe)
    unet = getattr(pipe, "unet", None)
    sample_size = unet.config.sample_size if unet is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # every module passed explicitly: from_pipe drops a model whose class differs from the type hint (the
        # lab's identity PixelVAE is not an AutoencoderKL)
        accepted = inspect.signature(cls.__init__).parameters
        new = cls.from_pipe(pipe, **{k: v for k, v in pipe.components.items() if k in accepted})
    if unet is not None:
        unet.register_to_config(sample_size=sample_size)
    if hasattr(pipe, "default_sample_size"):   # set by __init__ (Flux: a constant), possibly changed since
        new.default_sample_size = pipe.default_sample_size
    new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return new


def defend_pipeline(pipe: Any, concepts: Sequence[str | Concept] = ("nudity",),
                    config: SmoothingConfig | None = None, stage: str = "text", strict: bool = False) -> Any:
    """The defended pipeline of ``pipe``'s family, sharing its modules, defended against ``concepts``
    (``strict``: refuse calls with ``prompt_embeds`` instead of running them undefended)."""
    target = pipe if isinstance(pipe, DefendedMixin) else as_defended(pipe)
    return target.defend(concepts, config, stage, strict)


def undefended(pipe: Any) -> Any:
    """The ``--defense none`` baseline through the same code: the family class of ``pipe`` without a defense (it
    still reports ``timings``, ``relevance`` = [] and ``defended`` = False)."""
    if isinstance(pipe, DefendedMixin):
        return pipe.undefend()
    if defended_class(pipe) is None:
        raise AmsmoothError(f"{type(pipe).__name__} is not a diffusers SD 1.x/2.x, SDXL, SD3 or Flux pipeline "
                            "(SLD: amsmooth.baselines.sld.SLDPipeline runs undefended by itself)")
    return as_defended(pipe)


def family_slots(family: str) -> tuple:
    """The text-encoder slots of ``sd``, ``sdxl``, ``sd3`` or ``flux``."""
    return {"sd": sd.SD_SLOTS, "sdxl": sdxl.SDXL_SLOTS, "sd3": sd3.SD3_SLOTS, "flux": flux.FLUX_SLOTS}[family]
