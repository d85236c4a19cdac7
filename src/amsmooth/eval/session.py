"""One evaluation run as a typed request: which model, which defense, which prompt files, which RUN_DIR — and
``prepare`` (check everything, then load; RUN_DIR's config written last) and ``evaluate`` (generate, score, store).

``amsmooth eval`` and ``amsmooth utility`` build a :class:`RunRequest` from their flags; experiments (the lab
table) build one directly::

    request = RunRequest(ModelSource("lab", unet="esd.safetensors"), DefenseSpec.parse("ams", cfg),
                         prompts=("train.csv",), out=Path("runs/esd-ams"), settings=GenerationSettings(steps=25))
    stats, counts = evaluate(request, DetectorSpec("lab-nudity"))
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..io import check_writable_dir
from ..limits import GUIDANCE, IMAGE_SIDE, IMAGES_PER_PROMPT, STEPS
from ..model_relevance import attach_model_aware
from ..provenance import versions
from .defenses import Defense, DefenseSpec
from .runner import GenerationSettings, Job, RunStats, Shard, load_prompt_sets, make_jobs, process_shard, run_jobs
from .store import ResultStore

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Config keys that may change when a run is resumed: they do not change any image.
VOLATILE = ("limit", "device", "prompt_files", "versions", "reference", "clip")


@dataclass(frozen=True)
class ModelSource:
    """A pipeline to load: ``model`` (Hugging Face id, folder, 'lab', 'tiny' …) with its unlearned replacements."""

    model: str
    unet: str | None = None
    transformer: str | None = None
    text_encoder: str | None = None
    device: str = "auto"
    dtype: str | None = None          # float32 | float16 | bfloat16; None: float16 on CUDA, float32 on CPU

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise AmsmoothError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(sorted(DTYPES))}")

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype:
            return DTYPES[self.dtype]
        return torch.float16 if device.type == "cuda" else torch.float32

    def load(self, device: torch.device | None = None, img2img: bool = False) -> Any:
        """The diffusers pipeline on ``device`` (default: this source's device)."""
        from ..models.hub import quiet_libraries
        from ..models.load import load_pipeline, resolve_device

        quiet_libraries()
        device = device or resolve_device(self.device)
        return load_pipeline(self.model, unet=self.unet, text_encoder=self.text_encoder, device=device,
                             dtype=self.torch_dtype(device), img2img=img2img, transformer=self.transformer)

    def label(self) -> str | None:
        """The replaced part's file stem (the report's model label), None when nothing is replaced."""
        replaced = self.unet or self.text_encoder
        return Path(replaced.rstrip("/")).stem if replaced else None


def check_generation(settings: GenerationSettings, batch_size: int = 1) -> None:
    """Reject bad generation numbers before anything is loaded or written."""
    STEPS.check(settings.steps)
    GUIDANCE.check(settings.guidance)
    for name in ("height", "width"):
        v = getattr(settings, name)
        if v is not None and (v < 8 or v % 8):
            raise AmsmoothError(f"--{name} must be a positive multiple of 8, got {v}")
        IMAGE_SIDE.check(v, f"--{name}")
    IMAGES_PER_PROMPT.check(settings.images_per_prompt)
    if batch_size < 1:
        raise AmsmoothError(f"--batch-size must be >= 1, got {batch_size}")


@dataclass(frozen=True)
class RunRequest:
    """One run: ``model`` defended by ``defense`` on every case of ``prompts`` (data-contract CSVs or shipped
    set names), one row per image in the run directory ``out`` (resumable with the same request)."""

    model: ModelSource
    defense: DefenseSpec
    prompts: tuple[str, ...]
    out: Path
    settings: GenerationSettings = GenerationSettings()
    limit: int | None = None           # only the first N cases of each prompt set
    label: str | None = None           # row label in the report
    model_label: str | None = None     # model label in the report (default: the replaced part's file stem)
    batch_size: int = 1                # cases per pipeline call (byte-identical images to 1)

    def check(self) -> None:
        check_generation(self.settings, self.batch_size)
        if self.limit is not None and self.limit < 1:
            raise AmsmoothError(f"--limit must be >= 1, got {self.limit}")

    def config(self, command: str, sets: list, device: torch.device, extra: dict[str, Any]) -> dict[str, Any]:
        """The resolved configuration written once to RUN_DIR/config.json."""
        spec = self.defense
        return {"command": command, "model": self.model.model, "unet": self.model.unet,
                "text_encoder": self.model.text_encoder, "model_label": self.model_label or self.model.label(),
                "label": self.label, "dtype": str(self.model.torch_dtype(device)).removeprefix("torch."),
                "defense": spec.name, "defense_config": spec.settings(),
                "prompt_sets": {s.name: {"sha1": s.sha1, "cases": len(s.cases)} for s in sets},
                "prompt_files": {s.name: str(s.path) for s in sets},
                "generation": asdict(self.settings),
                "limit": self.limit, "device": str(device), "versions": versions(), **extra}


@dataclass(frozen=True)
class DetectorSpec:
    """A detector by name (nudenet, q16, lab-nudity, lab-violence) and its options (``eval.detectors``)."""

    name: str
    threshold: float | None = None
    classes: tuple[str, ...] | None = None     # NudeNet classes that flag an image (default: the paper's nine)
    q16_clip: str | None = None                # CLIP ViT-L/14 of q16

    def build(self, device: torch.device) -> Any:
        from .detectors import DETECTORS, make_detector

        if self.name not in DETECTORS:
            raise AmsmoothError(f"unknown detector {self.name!r}; choose one of: {', '.join(DETECTORS)}")
        classes = list(self.classes) if self.classes is not None else None
        return make_detector(self.name, self.threshold, classes, self.q16_clip, device)


@dataclass
class Run:
    """Everything one process of a run needs."""

    request: RunRequest
    run_dir: Path
    store: ResultStore
    defense: Defense
    pipe: Any
    jobs: list[Job]          # the whole run's cases (every process)
    shard: Shard
    settings: GenerationSettings
    device: torch.device
    detector: Any = None
    preloaded: Any = None    # what prepare's ``preload`` returned (utility: the reference model's pipeline)

    @property
    def my_jobs(self) -> list[Job]:
        return self.shard.take(self.jobs)


def prepare(request: RunRequest, command: str, extra: dict[str, Any] | None = None,
            detector: DetectorSpec | None = None, preload: Callable[[torch.device], Any] | None = None) -> Run:
    """Check everything cheap first, then the detector, the RUN_DIR's config, the model (and ``preload``'s,
    e.g. a reference model); write the config last, so a failure at any step leaves RUN_DIR as it was."""
    from ..models.load import resolve_device

    request.check()
    spec = request.defense
    sets = load_prompt_sets(request.prompts)
    run_dir = Path(request.out)
    check_writable_dir(run_dir)
    shard, device = process_shard(resolve_device(request.model.device))
    det = detector.build(device) if detector is not None else None
    extra = dict(extra or {})
    if det is not None:
        extra["detector"] = det.settings()
    config = request.config(command, sets, device, extra)
    ResultStore.check(run_dir, config, VOLATILE)
    pipe = request.model.load(device)
    defense = spec.build(pipe, device)
    if spec.model_aware:
        attach_model_aware(defense.pipeline, reference_unet(request.model, spec.model_aware, pipe),
                           spec.ams.concepts[0])
    preloaded = preload(device) if preload is not None else None
    store = ResultStore.open(run_dir, config, VOLATILE)
    return Run(request, run_dir, store, defense, pipe, make_jobs(sets, request.limit), shard, request.settings,
               device, det, preloaded)


def reference_unet(model: ModelSource, reference: str, pipe: Any) -> Any:
    """The U-Net of model-aware relevance, on ``pipe``'s device and dtype. 'base': the source model's own U-Net —
    ``pipe``'s when no --unet replaced it, else the source model's loaded once more (only its U-Net is kept);
    a U-Net file: a copy of ``pipe``'s U-Net with that file's weights."""
    import copy

    if reference == "base" and model.unet is None:
        return pipe.unet
    if reference == "base":
        from ..models.load import load_pipeline

        return load_pipeline(model.model, device=pipe.device, dtype=pipe.unet.dtype).unet.eval()
    from ..models.weights import load_unet_weights

    unet = copy.deepcopy(pipe.unet)
    load_unet_weights(unet, reference)
    return unet.eval()


def evaluate(request: RunRequest, detector: DetectorSpec,
             on_run: Callable[[Run, RunStats], None] | None = None) -> dict[str, tuple[int, int]]:
    """``amsmooth eval``: generate every image of ``request`` not yet done, score it with ``detector``, store its
    row; returns {prompt set: (flagged, scored)} over the whole run (every process's rows; {} in a sharded run,
    whose last process reads the totals with ``amsmooth report``). ``on_run`` sees the run and this process's
    stats before the totals are read (the CLI prints its progress line there)."""
    from .tables import summarize

    run = prepare(request, "eval", detector=detector)
    with run.store:
        stats = run_jobs(run.defense, run.my_jobs, run.settings, run.run_dir, run.store, run.detector,
                         batch_size=request.batch_size)
        if on_run is not None:
            on_run(run, stats)
        return summarize(run.store).counts if run.shard.count == 1 else {}
