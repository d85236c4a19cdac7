"""What ``eval`` and ``utility`` share: the defense and run options, the resolved run configuration, and
``prepare`` (check everything, then load; RUN_DIR is written last)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..eval.defenses import DEFENSES, Defense, DefenseSpec
from ..eval.runner import GenerationSettings, Job, RunStats, Shard, load_prompt_sets, make_jobs, process_shard
from ..eval.store import ResultStore
from ..io import check_writable_dir
from ..model_relevance import attach_model_aware
from ..pipelines.unet_stage import STAGES
from .common import (
    SAFREE_OPTIONS,
    SMOOTHING_OPTIONS,
    add_concept_args,
    add_safree_args,
    add_smoothing_args,
    safree_config,
    smoothing_config,
    smoothing_flags_text,
)
from .model_options import generation_settings, load_model, resolve_dtype, validate_generation

# Config keys that may change when a run is resumed: they do not change any image.
VOLATILE = ("limit", "device", "prompt_files", "versions", "reference", "clip")


def add_defense_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("defense")
    g.add_argument("--defense", required=True, metavar="NAME",
                   help=f"{', '.join(DEFENSES)}; 'ams' is Adaptive Median Smoothing alone")
    g.add_argument("--ams", action="store_true",
                   help="add AMS on top of --defense blacklist, posi, sld-* or safree (e.g. --defense sld-medium "
                        "--ams)")
    g.add_argument("--smoothing-stage", choices=STAGES, default="text",
                   help="text: AMS (default); unet: naive median of n U-Net predictions per step (Sec. 3.2)")
    add_concept_args(g)
    add_smoothing_args(g)
    g.add_argument("--blacklist", metavar="PATH", help="word list of --defense blacklist, one word/phrase a line "
                                                       "(default: amsmooth's short list; see docs/evaluation.md)")
    g.add_argument("--posi-model", metavar="DIR", help="local causal-LM folder of --defense posi")
    g.add_argument("--model-aware", metavar="REF",
                   help="AMS relevance from the model (the lab table's oracle arm): each token's effect on the "
                        "defended U-Net's noise prediction toward REF's concept direction; REF: 'base' (--model's "
                        "own U-Net) or a U-Net file (docs/method.md)")
    add_safree_args(g)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", action="append", required=True, metavar="CSV",
                   help="prompt set in the data contract (prompt, case_number, evaluation_seed, "
                        "evaluation_guidance), or a shipped set's name (uda_nudity); repeat for several")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resume: same command again)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N cases of each prompt set")
    p.add_argument("--label", help="row label in the report (default: the defense and its differing settings)")
    p.add_argument("--model-label", help="model label in the report (default: the --unet / --text-encoder file "
                                         "name, else --model)")


def defense_spec(args: argparse.Namespace) -> DefenseSpec:
    """The defense of the flags; smoothing flags without AMS are refused rather than ignored."""
    ams = args.ams or args.defense == "ams"
    safree = args.defense == "safree"
    own = SMOOTHING_OPTIONS if safree else (*SMOOTHING_OPTIONS, "concept")   # SAFREE takes --concept too
    if not ams and any(getattr(args, f, None) is not None for f in own):
        raise AmsmoothError(f"smoothing options ({smoothing_flags_text(() if safree else ('--concept',))}) need "
                            "AMS: use --defense ams, or add --ams to another defense")
    if not safree and any(getattr(args, f, None) is not None for f in SAFREE_OPTIONS):
        raise AmsmoothError("--safree-* options configure --defense safree; they have no effect here")
    name = "ams" if args.defense == "none" and args.ams else args.defense
    return DefenseSpec.parse(name, smoothing_config(args) if ams else None, args.smoothing_stage,
                             args.blacklist, args.posi_model, getattr(args, "model_aware", None),
                             safree_config(args) if safree else None)


def model_label(args: argparse.Namespace) -> str | None:
    if args.model_label:
        return args.model_label
    replaced = args.unet or args.text_encoder
    return Path(replaced.rstrip("/")).stem if replaced else None


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    from .. import __version__

    return {"amsmooth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


@dataclass
class Run:
    """Everything one process of a run needs."""

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


def run_config(args: argparse.Namespace, command: str, spec: DefenseSpec, sets: list, device: torch.device,
               settings: GenerationSettings, extra: dict[str, Any]) -> dict[str, Any]:
    """The resolved configuration written once to RUN_DIR/config.json."""
    return {"command": command, "model": args.model, "unet": args.unet, "text_encoder": args.text_encoder,
            "model_label": model_label(args), "label": args.label,
            "dtype": str(resolve_dtype(args, device)).removeprefix("torch."),
            "defense": spec.name, "defense_config": spec.settings(),
            "prompt_sets": {s.name: {"sha1": s.sha1, "cases": len(s.cases)} for s in sets},
            "prompt_files": {s.name: str(s.path) for s in sets},
            "generation": asdict(settings),
            "limit": args.limit, "device": str(device), "versions": versions(), **extra}


def prepare(args: argparse.Namespace, command: str, extra: dict[str, Any] | None = None,
            detector: Callable[[torch.device], Any] | None = None,
            preload: Callable[[torch.device], Any] | None = None) -> Run:
    """Check everything cheap first, then the detector, the RUN_DIR's config, the model (and ``preload``'s,
    e.g. a reference model); write the config last, so a failure at any step leaves RUN_DIR as it was."""
    from ..models.load import resolve_device

    validate_generation(args)
    if args.limit is not None and args.limit < 1:
        raise AmsmoothError(f"--limit must be >= 1, got {args.limit}")
    spec = defense_spec(args)
    sets = load_prompt_sets(args.prompts)
    run_dir = Path(args.out)
    check_writable_dir(run_dir)
    shard, device = process_shard(resolve_device(args.device))
    det = detector(device) if detector is not None else None
    settings = generation_settings(args)
    extra = dict(extra or {})
    if det is not None:
        extra["detector"] = det.settings()
    config = run_config(args, command, spec, sets, device, settings, extra)
    ResultStore.check(run_dir, config, VOLATILE)
    pipe = load_model(args, device)
    defense = spec.build(pipe, device)
    if spec.model_aware:
        attach_model_aware(defense.pipeline, reference_unet(args.model, spec.model_aware, device),
                           spec.ams.concepts[0])
    preloaded = preload(device) if preload is not None else None
    store = ResultStore.open(run_dir, config, VOLATILE)
    return Run(run_dir, store, defense, pipe, make_jobs(sets, args.limit), shard, settings, device, det,
               preloaded)


def reference_unet(model: str, reference: str, device: torch.device) -> Any:
    """The U-Net of --model-aware: 'base' is --model's own (before --unet), else --model with that U-Net file."""
    from ..models.load import load_pipeline

    return load_pipeline(model, unet=None if reference == "base" else reference, device=device).unet.eval()


def report_progress(command: str, run: Run, stats: RunStats) -> None:
    """One line: images this process stored, found done, and left to another process running on RUN_DIR."""
    who = f"process {run.shard.index + 1}/{run.shard.count}: " if run.shard.count > 1 else ""
    rate = (f"{stats.seconds / stats.new:.3f} s/image ({run.defense.spec.name})" if stats.new
            else "nothing left to generate")
    busy = (f", {stats.busy} being generated by another process (rerun the command afterwards)"
            if stats.busy else "")
    print(f"{command}: {who}{stats.new} new image(s), {stats.skipped} already done{busy}; {rate}")
