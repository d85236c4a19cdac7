"""Request bodies of the JSON API: every field bounded, unknown fields and non-finite numbers refused.

Smoothing fields left out (or null) take the server's settings (``--preset``, ``--sigma0`` …); ``global`` is
Algorithm 1's flag. Seeds stop at 2**53 − 1 so that a browser (JavaScript numbers) sends them exactly.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import RELEVANCE_METHODS
from ..limits import GUIDANCE, SMOOTHING_N, STEPS

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**53 - 1
MAX_SMOOTHING_N = int(SMOOTHING_N.high)   # the shared bound (amsmooth.limits), as the CLI's
MAX_STEPS = min(150, int(STEPS.high))     # the service's budget: tighter than the CLI's bound
MAX_CERTIFY_SAMPLES = 10_000
MAX_CONCEPTS = 4


class _Body(BaseModel):
    """Strict JSON bodies: no extra keys, no NaN/Infinity, no string-to-number coercion."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, populate_by_name=True)


class SmoothingRequest(_Body):
    """A prompt and the smoothing settings that decide its per-token σ."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="the text prompt")
    sigma0: float | None = Field(None, ge=0.0, le=1.0, description="base noise σ0")
    k: float | None = Field(None, ge=-50.0, le=50.0, description="scaling factor: σ_j = σ0·exp(k·sim_j)")
    use_global: bool | None = Field(None, alias="global", description="add global relevance (Algorithm 1)")
    relevance: Literal[RELEVANCE_METHODS] | None = Field(  # type: ignore[valid-type]
        None, description=f"relevance method: {', '.join(RELEVANCE_METHODS)}")
    concepts: list[str] | None = Field(None, min_length=1, max_length=MAX_CONCEPTS,
                                       description="concept names (relevance = max over them)")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty (type a few words)")
        return value

    def overrides(self) -> dict:
        """The SmoothingConfig fields this request sets (the rest come from the server's settings)."""
        fields = {"sigma0": self.sigma0, "k": self.k, "use_global": self.use_global, "relevance": self.relevance,
                  "concepts": tuple(self.concepts) if self.concepts is not None else None}
        return {name: value for name, value in fields.items() if value is not None}


class RelevanceRequest(SmoothingRequest):
    """``POST /relevance``: per-token relevance and σ (Algorithm 1)."""


class GenerateRequest(SmoothingRequest):
    """``POST /generate``: the undefended and/or defended image for one seed."""

    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the image latents (and, derived, the noise)")
    n: int | None = Field(None, ge=int(SMOOTHING_N.low), le=MAX_SMOOTHING_N, description="noisy encodings per median")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="denoising steps (default: the server's)")
    guidance: float | None = Field(None, ge=GUIDANCE.low, le=GUIDANCE.high,
                                   description="classifier-free guidance scale")
    defense: Literal["both", "ams", "none"] = Field("both", description="both, ams (defended) or none")

    def overrides(self) -> dict:
        out = super().overrides()
        if self.n is not None:
            out["n"] = self.n
        return out


class CertifyRequest(SmoothingRequest):
    """``POST /certify``: Theorem 3.2's certified bound for the prompt's smoothed conditioning."""

    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the Monte-Carlo noise")
    rho: float = Field(1.0, gt=0.0, le=100.0, description="radius ρ' in the Σ-norm")
    samples: int = Field(1000, ge=1, le=MAX_CERTIFY_SAMPLES, description="Monte-Carlo encodings")
    alpha: float = Field(0.001, gt=0.0, lt=1.0, description="probability that the certificate is wrong")
