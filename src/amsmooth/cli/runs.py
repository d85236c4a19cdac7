"""What ``eval`` and ``utility`` share: the defense and run options, and the typed run they describe
(``eval.session.RunRequest``; ``eval.session.prepare`` checks it, loads, and writes RUN_DIR last)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import AmsmoothError
from ..eval.defenses import DEFENSES, DefenseSpec
from ..eval.runner import RunStats
from ..eval.session import Run, RunRequest
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
from .model_options import generation_settings, model_source, validate_generation


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


def run_request(args: argparse.Namespace) -> RunRequest:
    """The run the flags describe (checked when prepared: ``eval.session.prepare``)."""
    validate_generation(args)
    return RunRequest(model_source(args), defense_spec(args), tuple(args.prompts), Path(args.out),
                      generation_settings(args), limit=args.limit, label=args.label, model_label=args.model_label,
                      batch_size=getattr(args, "batch_size", 1))


def report_progress(command: str, run: Run, stats: RunStats) -> None:
    """One line: images this process stored, found done, and left to another process running on RUN_DIR."""
    who = f"process {run.shard.index + 1}/{run.shard.count}: " if run.shard.count > 1 else ""
    rate = (f"{stats.seconds / stats.new:.3f} s/image ({run.defense.spec.name})" if stats.new
            else "nothing left to generate")
    busy = (f", {stats.busy} being generated by another process (rerun the command afterwards)"
            if stats.busy else "")
    print(f"{command}: {who}{stats.new} new image(s), {stats.skipped} already done{busy}; {rate}")
