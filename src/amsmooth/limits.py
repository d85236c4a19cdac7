"""The bounds of user-given numbers, in one table that every entry point checks: the CLI's flags, prompt CSV cells
and the web service's request fields (``serve/schemas.py`` builds its fields from these). A value outside its
bound is refused with one line, never clamped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import AmsmoothError


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high`` (``low < value`` with ``low_open``), and why."""

    name: str
    low: float
    high: float
    why: str
    low_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            side = ">" if self.low_open else ">="
            return f"must be {side} {self.low:g} and <= {self.high:g}, got {value:g} ({self.why})"
        return None

    def check(self, value: float | None, where: str | None = None) -> None:
        """Refuse ``value`` (None passes: not given) with one line naming ``where`` (default ``--name``)."""
        problem = None if value is None else self.problem(value)
        if problem:
            raise AmsmoothError(f"{where or '--' + self.name.replace('_', '-')} {problem}")


GUIDANCE = Bound("guidance", 0.0, 50.0, "classifier-free guidance scale: 0-1 turns guidance off, the paper uses 7.5; "
                                        "a negative scale would steer away from the prompt")
SMOOTHING_N = Bound("n", 1, 101, "noisy encodings per median; the paper uses 13, more only costs time")
STEPS = Bound("steps", 1, 1000, "denoising steps; schedulers have 1000 training timesteps")
STRENGTH = Bound("strength", 0.0, 1.0, "image-to-image strength: the share of the steps run from the init image",
                 low_open=True)
IMAGES_PER_PROMPT = Bound("images_per_prompt", 1, 64, "images drawn in one pipeline call per prompt; for more, "
                                                      "rerun with other seeds")
IMAGE_SIDE = Bound("side", 8, 4096, "pixels; SD 1.x draws 512, SDXL and Flux 1024")
