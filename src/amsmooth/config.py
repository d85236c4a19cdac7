"""Smoothing configuration and the paper's presets (Appendix D)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import AmsmoothError
from .limits import SMOOTHING_N

# The largest per-token noise allowed: σ_j = σ0·exp(k·sim_j). Beyond it the noise drowns any prompt (token
# embeddings are O(0.01-1)) and, past 6.5e4 in float16 (3e38 in float32), overflows to inf: black images, NaN
# certificates. Two checks: a setting whose σ would overflow float32 even at sim = ±1 is refused when it is
# configured (check_sigma_limit, after the unit conversion); any σ actually drawn above SIGMA_MAX is refused when
# it is computed (relevance.noise_schedule) — so k = 20 is usable where the concept's scores stay small.
SIGMA_MAX = 1e4
SIGMA_OVERFLOW = 1e37


SIGMA_UNITS = ("absolute", "embedding-std")

# Relevance methods (amsmooth.relevance_methods.METHODS holds their functions; docs/method.md describes them).
RELEVANCE_METHODS = ("algorithm1", "contextual", "attribution", "subspace", "proximity")


def option(value: Any, help: str | None = None, **meta: Any) -> Any:
    """A config field that is a command-line flag: ``help`` (metadata "cli") makes it one, and the command line
    (``amsmooth.cli.config_flags``) derives its name, type, choices and the default its help shows from the field,
    so the default is written here only. A subclass that redeclares the field keeps the flag; it may add ``note``
    (words after its default in the help: "generations") or ``default`` (what a None default means). Optional
    ``flag`` (its name, if not the field's), ``metavar``."""
    return field(default=value, metadata={**({"cli": help} if help else {}), **meta})


def check_sigma_limit(sigma0: float, k: float, unit: float = 1.0, unit_name: str = "") -> None:
    """Refuse a schedule whose σ at sim = ±1, σ0·unit·exp(|k|), would overflow float32 (SIGMA_OVERFLOW).

    ``sigma0`` is in units of ``unit`` (1 for absolute σ0; the encoder's token-embedding std for
    ``sigma_unit = "embedding-std"``), so the limit always applies to the noise actually drawn."""
    if sigma0 <= 0 or unit <= 0:
        return
    if math.log(sigma0) + math.log(unit) + abs(k) > math.log(SIGMA_OVERFLOW):
        scale = f"{sigma0:g} {unit_name} (= {sigma0 * unit:g})" if unit_name else f"{sigma0:g}"
        raise AmsmoothError(f"sigma0·exp(|k|) = {scale}·exp({abs(k):g}) exceeds {SIGMA_OVERFLOW:g}: the noise "
                            "would overflow; lower --k or --sigma0 (paper: sigma0 0.006-0.012, k 9)")


@dataclass(frozen=True)
class SmoothingConfig:
    """Every knob of Adaptive Median Smoothing, one field each."""

    # Fields with a "cli" help text are the smoothing flags of every command (amsmooth.cli.common derives them).
    sigma0: float = field(default=0.006, metadata={"cli": "base noise σ0 (Sec. 3.4), in units of --sigma-unit"})
    sigma_unit: str = field(default="absolute", metadata={
        "cli": "unit of --sigma0: absolute (the paper's) or embedding-std (σ0 × the std of the encoder's token "
               "embeddings, so one setting carries across encoders)", "choices": SIGMA_UNITS})
    k: float = field(default=9.0, metadata={"cli": "scaling factor k: σ_j = σ0·exp(k·sim_j)"})
    n: int = field(default=13, metadata={"cli": "number of noisy encodings (odd: the median is one of them)"})
    relevance: str = field(default="algorithm1", metadata={
        "cli": "relevance method: algorithm1 (the paper's Algorithm 1), contextual (each token's masked effect on "
               "the prompt's encoding, on Δ), attribution (gradient × input of the concept score), subspace "
               "(projection on the concept words' subspace), proximity (each word's pooled embedding against the "
               "concept's words, cosine); all but algorithm1 are on a calibrated scale "
               "(docs/method.md)", "choices": RELEVANCE_METHODS})
    use_global: bool = field(default=False, metadata={"cli": "add global (whole-prompt) relevance (Algorithm 1's "
                                                             "flag)", "flag": "global"})
    noise_special_tokens: bool = field(default=False, metadata={
        "cli": "also noise start/end/padding tokens with σ0 (the paper does not)"})
    concepts: tuple[str, ...] = ()   # names of the concepts, for the record (the Concept objects carry the data)
    max_batch: int = 512             # largest encoder batch; larger n·B is split into chunks
    cache_size: int = 4096           # per-word local-relevance LRU entries (0 disables the cache)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma0) and self.sigma0 >= 0):
            raise AmsmoothError(f"sigma0 must be a finite number >= 0, got {self.sigma0}")
        if self.sigma_unit not in SIGMA_UNITS:
            raise AmsmoothError(f"sigma_unit must be one of {', '.join(SIGMA_UNITS)}, got {self.sigma_unit!r}")
        if self.relevance not in RELEVANCE_METHODS:
            raise AmsmoothError(f"relevance must be one of {', '.join(RELEVANCE_METHODS)}, got {self.relevance!r}")
        if self.use_global and self.relevance != "algorithm1":
            raise AmsmoothError(f"--global is Algorithm 1's flag; relevance {self.relevance!r} already scores each "
                                "token in its prompt (drop --global or use --relevance algorithm1)")
        if not math.isfinite(self.k):
            raise AmsmoothError(f"k must be a finite number, got {self.k}")
        if self.sigma_unit == "absolute":   # in embedding-std units the encoder's std is needed: check_sigma_limit
            check_sigma_limit(self.sigma0, self.k)
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise AmsmoothError(f"n must be an integer >= 1, got {self.n}")
        SMOOTHING_N.check(self.n, "n")
        if self.max_batch < 1:
            raise AmsmoothError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.cache_size < 0:
            raise AmsmoothError(f"cache_size must be >= 0, got {self.cache_size}")
        object.__setattr__(self, "concepts", tuple(self.concepts))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d

    def replace(self, **changes: Any) -> SmoothingConfig:
        return replace(self, **changes)


# Appendix D: n = 13; ESD σ0 = 0.006, UCE σ0 = 0.012, k = 9; global relevance only for UCE + nudity.
PRESETS: dict[str, SmoothingConfig] = {
    "esd-nudity": SmoothingConfig(sigma0=0.006, k=9.0, n=13, use_global=False, concepts=("nudity",)),
    "uce-nudity": SmoothingConfig(sigma0=0.012, k=9.0, n=13, use_global=True, concepts=("nudity",)),
    "esd-violence": SmoothingConfig(sigma0=0.006, k=9.0, n=13, use_global=False, concepts=("violence",)),
    "uce-violence": SmoothingConfig(sigma0=0.012, k=9.0, n=13, use_global=False, concepts=("violence",)),
    # The lab model (``--model lab`` / ``--encoder lab``): σ0 in token-embedding stds, chosen on the lab table's
    # calibration split for ESD (docs/lab/calibration.json); the lab commands take it by default (cli.common).
    "lab-nudity": SmoothingConfig(sigma0=0.25, sigma_unit="embedding-std", k=9.0, n=13, concepts=("nudity",)),
}

# The preset a command takes when no --preset is given, by --model / --encoder source.
DEFAULT_PRESETS = {"lab": "lab-nudity"}


def default_preset(*sources: str | None) -> str | None:
    """The preset of the first model or encoder source that has one (``lab`` → ``lab-nudity``), else None."""
    return next((DEFAULT_PRESETS[s] for s in sources if isinstance(s, str) and s in DEFAULT_PRESETS), None)


def preset(name: str) -> SmoothingConfig:
    """The named preset; unknown names list the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise AmsmoothError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
