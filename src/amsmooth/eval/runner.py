"""Running an evaluation: prompt sets → (sharded) cases → K images each → detector → one stored row per image.

Per the data contract, each case's images come from a CPU generator seeded with its ``evaluation_seed`` and use
its ``evaluation_guidance`` (defaults when the file has none). Every image is saved atomically as
``RUN_DIR/<folder>/<prompt set>/{case_number}_{k}.png`` and its row committed before the next case (or batch of
cases, ``--batch-size``) starts, so a killed run resumes where it stopped. Under ``accelerate launch`` case i
of the run goes to process i mod N.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..io import atomic_save_image, inside
from ..prompts import GenerationSettings, PromptCase, read_prompts_file
from .defenses import Defense
from .store import ImageResult, ResultStore

IMAGES = "images"


# -- prompt sets ---------------------------------------------------------------------------------------------


def builtin_prompt_sets() -> dict[str, Path]:
    """Prompt sets shipped with amsmooth (see data/SOURCES.md), by name: ``uda_nudity``."""
    folder = Path(str(resources.files("amsmooth") / "data" / "prompts"))
    return {p.stem: p for p in sorted(folder.glob("*.csv"))}


@dataclass(frozen=True)
class PromptSet:
    """One prompt file: its name (the file's stem), path, cases and a SHA-1 of its bytes."""

    name: str
    path: Path
    cases: tuple[PromptCase, ...]
    sha1: str


def resolve_prompt_file(spec: str) -> Path:
    """A path, or the name of a shipped prompt set."""
    path = Path(spec).expanduser()
    if path.exists() or spec not in builtin_prompt_sets():
        return path
    return builtin_prompt_sets()[spec]


def load_prompt_set(spec: str) -> PromptSet:
    path = resolve_prompt_file(spec)
    if not path.exists():
        raise AmsmoothError(f"prompt file not found: {spec} (shipped sets: {', '.join(builtin_prompt_sets())})")
    cases = read_prompts_file(path)      # case numbers checked there: each must name a file
    return PromptSet(path.stem, path, tuple(cases), hashlib.sha1(path.read_bytes()).hexdigest())


def load_prompt_sets(specs: Sequence[str]) -> list[PromptSet]:
    """Every ``--prompts`` file, checked; two files with one name (stem) are refused."""
    sets = [load_prompt_set(s) for s in specs]
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AmsmoothError(f"two prompt files are named {dup[0]!r}; prompt sets are named by their file stem, "
                            "rename one")
    return sets


@dataclass(frozen=True)
class Job:
    """One case of one prompt set."""

    prompt_set: str
    case: PromptCase


def make_jobs(sets: Sequence[PromptSet], limit: int | None = None) -> list[Job]:
    """The run's cases in order: each set's first ``limit`` cases (all when None), set after set."""
    return [Job(s.name, c) for s in sets for c in s.cases[:limit]]


# -- processes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's share of the run: job i belongs to process i mod ``count``."""

    index: int = 0
    count: int = 1

    def take(self, jobs: Sequence[Job]) -> list[Job]:
        return list(jobs[self.index::self.count])


def process_shard(device: torch.device) -> tuple[Shard, torch.device]:
    """(this process's shard, its device) under ``accelerate launch``; one process alone gets ``Shard(0, 1)``.
    With several processes an unindexed ``cuda`` becomes this process's own GPU."""
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes > 1 and device.type == "cuda" and device.index is None:
        device = state.device
    return Shard(state.process_index, state.num_processes), device


# -- generation ----------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """What one process did: images it stored (new), images found done (skipped), images of cases another live
    process was generating (busy, left to it), and its generation seconds."""

    new: int = 0
    skipped: int = 0
    seconds: float = 0.0
    busy: int = 0


def image_path(folder: str, job: Job, k: int) -> str:
    """Path of image k of a case, relative to RUN_DIR."""
    return f"{folder}/{job.prompt_set}/{job.case.case_number}_{k}.png"


def run_jobs(defense: Defense, jobs: Sequence[Job], settings: GenerationSettings, run_dir: Path,
             store: ResultStore | None = None, detector: Any = None, folder: str = IMAGES,
             desc: str = "eval", batch_size: int = 1) -> RunStats:
    """Generate (and score, and store) every image of ``jobs`` not yet done, ``batch_size`` cases a call.

    With a ``store``, done = its row exists (read per case, so work another process finished meanwhile is not
    redone), a case is claimed before it is generated (a case another live process holds is left to it), and
    only rows this process inserted count as new; each image gets a row (``detector`` None: unscored, as in
    utility runs). Without one (reference images), done = its file exists. Cases still to do are batched in
    order while they share a guidance (the other generation settings are the run's); each image is still saved
    and its row committed on its own.
    """
    from tqdm.auto import tqdm

    stats, K, pending = RunStats(), settings.images_per_prompt, []
    try:
        for job in tqdm(jobs, desc=desc, unit="case", file=sys.stderr, disable=None):
            missing = _missing(job, K, store, run_dir, folder)
            stats.skipped += K - len(missing)
            if not missing:
                continue
            if pending and settings.guidance_of(pending[0][0].case) != settings.guidance_of(job.case):
                _flush(defense, pending, settings, run_dir, store, detector, folder, stats)
            if store is not None and not store.claim(job.prompt_set, job.case.case_number):
                stats.busy += len(missing)
                continue
            pending.append((job, missing))
            if len(pending) >= batch_size:
                _flush(defense, pending, settings, run_dir, store, detector, folder, stats)
        _flush(defense, pending, settings, run_dir, store, detector, folder, stats)
    finally:
        _release(store, pending)
    return stats


def _flush(defense: Defense, pending: list[tuple[Job, list[int]]], settings: GenerationSettings, run_dir: Path,
           store: ResultStore | None, detector: Any, folder: str, stats: RunStats) -> None:
    """Generate the ``pending`` (claimed) cases in one batch, save and store their missing images, release
    their claims; ``pending`` is emptied."""
    if not pending:
        return
    try:
        gens = generate_cases(defense, [j for j, _ in pending], settings)
        for (job, missing), gen in zip(pending, gens, strict=True):
            _store_case(defense, job, missing, gen, settings, run_dir, store, detector, folder, stats)
    finally:
        _release(store, pending)
        pending.clear()


def _release(store: ResultStore | None, pending: list[tuple[Job, list[int]]]) -> None:
    if store is not None:
        for job, _ in pending:
            store.release(job.prompt_set, job.case.case_number)


def generate_cases(defense: Defense, jobs: Sequence[Job], settings: GenerationSettings) -> list[Any]:
    """All K images of each case (``Generated``), in one pipeline call; one case alone is generated exactly as
    before batching existed (one generator for its K images)."""
    first = jobs[0].case
    K, kwargs = settings.images_per_prompt, settings.kwargs(first)
    if len(jobs) == 1:
        return [defense(first.prompt, settings.seed_of(first), K, **kwargs)]
    return defense.batch([j.case.prompt for j in jobs], [settings.seed_of(j.case) for j in jobs], K, **kwargs)


def _missing(job: Job, K: int, store: ResultStore | None, run_dir: Path, folder: str) -> list[int]:
    if store is not None:
        done = store.done_of(job.prompt_set, job.case.case_number)
        return [k for k in range(K) if k not in done]
    return [k for k in range(K) if not (run_dir / image_path(folder, job, k)).is_file()]


def _store_case(defense: Defense, job: Job, missing: list[int], gen: Any, settings: GenerationSettings,
                run_dir: Path, store: ResultStore | None, detector: Any, folder: str, stats: RunStats) -> None:
    """The case's ``missing`` images of ``gen`` (all K were generated, for the seeds): scored, saved, stored."""
    verdicts = detector.detect([gen.images[k] for k in missing]) if detector is not None else [None] * len(missing)
    for k, verdict in zip(missing, verdicts, strict=True):
        path = image_path(folder, job, k)
        target = inside(run_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_image(target, gen.images[k])      # durable before its row is committed
        added = store is None or store.add(_row(defense, job, k, settings, gen.prompt_used, gen.seconds_per_image,
                                                path, detector, verdict))
        stats.new += int(added)
        stats.skipped += int(not added)
    stats.seconds += gen.seconds_per_image * len(missing)


def _row(defense: Defense, job: Job, k: int, settings: GenerationSettings, prompt_used: str | None,
         seconds: float, path: str, detector: Any, verdict: Any) -> ImageResult:
    return ImageResult(job.prompt_set, job.case.case_number, k, job.case.prompt, defense.spec.name,
                       defense.settings, seed=settings.seed_of(job.case), prompt_used=prompt_used,
                       detector=None if detector is None else detector.name,
                       scores={} if verdict is None else verdict.scores,
                       flagged=None if verdict is None else verdict.flagged, seconds=seconds, image=path)
