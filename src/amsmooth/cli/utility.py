"""``amsmooth utility``: utility of a defense as the paper measures it — FID (TF-FID Inception) against reference
images and CLIP score, on captions (e.g. COCO) generated per the data contract."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from ..eval.defenses import DefenseSpec
from ..eval.runner import IMAGES, Job, image_path, run_jobs
from ..eval.session import Run, prepare
from .model_options import add_generation_args, add_model_args
from .runs import add_defense_args, add_run_args, report_progress, run_request

REFERENCE = "reference"  # RUN_DIR/reference/<set>/…: images of --reference-defense none
CLIP_SKIPPED = ("CLIP score: skipped — no --clip SRC given. amsmooth ships no CLIP weights: pass a CLIP checkpoint "
                "(the paper: openai/clip-vit-large-patch14, a Hugging Face id or a local folder) to measure it")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("utility", help="FID and CLIP score of a defense on captions (e.g. COCO)")
    add_model_args(p)
    add_defense_args(p)
    add_run_args(p)
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", metavar="DIR|NPZ",
                     help="reference images (e.g. the COCO photos of the captions), or FID statistics .npz")
    ref.add_argument("--reference-model", metavar="SRC",
                     help="the paper's FID: reference = images of SRC (the original model before unlearning, e.g. "
                          "CompVis/stable-diffusion-v1-4; Hugging Face id, diffusers folder or 'tiny'), undefended, "
                          "same prompts and seeds (generated into RUN_DIR/reference-model-<id>/)")
    ref.add_argument("--reference-defense", choices=["none"],
                     help="none: reference = the same (unlearned) model undefended, same prompts and seeds "
                          f"(generated into RUN_DIR/{REFERENCE}/); measures what the defense alone changes — not "
                          "the paper's FID (use --reference-model)")
    p.add_argument("--clip", metavar="SRC", help="CLIP weights for the CLIP score (Hugging Face id or local "
                                                 "folder); without it the CLIP score is skipped")
    add_generation_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.reference:
        check_reference(Path(args.reference))
    reference = reference_label(args)
    run = prepare(run_request(args), "utility", extra={"reference": reference, "clip": args.clip},
                  preload=lambda device: reference_pipeline(args, device) if args.reference_model else None)
    folder = reference_folder(args)
    with run.store:
        stats = run_jobs(run.defense, run.my_jobs, run.settings, run.run_dir, run.store, desc="utility",
                         batch_size=args.batch_size)
        report_progress("utility", run, stats)
        if folder is not None:
            plain = DefenseSpec().build(run.preloaded or run.pipe, run.device)
            run_jobs(plain, run.my_jobs, run.settings, run.run_dir, folder=folder, desc="reference",
                     batch_size=args.batch_size)
        # No barrier: every process checks after its own last image, so the last one to finish sees all
        # images and measures (two finishing together both measure the same numbers).
        missing = len(missing_images(run, folder))
        if missing:
            print(f"utility: {missing} image(s) of other processes still missing; the last process to finish "
                  "computes FID / CLIP score (or rerun the same command)")
            return 0
        measure(run, args, reference)
    return 0


def reference_label(args: argparse.Namespace) -> str:
    if args.reference:
        return args.reference
    if args.reference_model:
        return f"model {args.reference_model}"
    return f"defense {args.reference_defense}"


def reference_folder(args: argparse.Namespace) -> str | None:
    """RUN_DIR folder of generated reference images (None: --reference gives them); one folder per reference
    model, so switching it on a resume never mixes two models' images."""
    if args.reference_model:
        return f"{REFERENCE}-model-{hashlib.sha1(args.reference_model.encode()).hexdigest()[:10]}"
    return REFERENCE if args.reference_defense else None


def reference_pipeline(args: argparse.Namespace, device: Any) -> Any:
    """--reference-model's pipeline: undefended, without --unet / --text-encoder replacements."""
    from ..models.hub import quiet_libraries
    from ..models.load import load_pipeline
    from .model_options import resolve_dtype

    quiet_libraries()
    return load_pipeline(args.reference_model, device=device, dtype=resolve_dtype(args, device))


def check_reference(path: Path) -> None:
    if path.suffix.lower() == ".npz" and path.is_file():
        return
    from ..eval.metrics import image_files

    image_files(path)  # a folder with images, else one clear error


def missing_images(run: Run, folder: str | None) -> list[str]:
    """Images of the run's cases (all processes) not yet stored, and reference images (in ``folder``) not yet
    written."""
    done = run.store.done_keys()
    out = [image_path(IMAGES, j, k) for j, k in _images(run) if (j.prompt_set, j.case.case_number, k) not in done]
    if folder is not None:
        out += [p for j, k in _images(run) if not (run.run_dir / (p := image_path(folder, j, k))).is_file()]
    return out


def _images(run: Run) -> list[tuple[Job, int]]:
    return [(j, k) for j in run.jobs for k in range(run.settings.images_per_prompt)]


def generated(run: Run) -> tuple[list[Path], list[str]]:
    """Images and original prompts of the run's cases (all processes), in case order."""
    rows = {r.key: r for r in run.store.rows()}
    keys = [(j.prompt_set, j.case.case_number, k) for j, k in _images(run)]
    return [run.run_dir / rows[k].image for k in keys], [rows[k].prompt for k in keys]


def reference_features(run: Run, args: argparse.Namespace, fid: Any) -> int:
    """Put the reference side into ``fid``; returns its image count."""
    from ..eval.metrics import FeatureStats, image_files

    if args.reference and Path(args.reference).suffix.lower() == ".npz":
        fid.reference = FeatureStats.load(args.reference)
        return fid.reference.n
    if args.reference:
        files = image_files(args.reference)
    else:
        files = [run.run_dir / image_path(reference_folder(args), j, k) for j, k in _images(run)]
    fid.update(files, real=True)
    return len(files)


def measure(run: Run, args: argparse.Namespace, reference: str) -> None:
    """FID (and CLIP score with --clip) of the run's images, stored as run metrics and printed."""
    from ..eval.metrics import FID, ClipScore, InceptionFeatures

    images, prompts = generated(run)
    fid = FID(InceptionFeatures(run.device))
    n_ref = reference_features(run, args, fid)
    fid.update(images, real=False)
    value = fid.compute()
    run.store.set_metric("fid", value, len(images), {"reference": reference, "n_reference": n_ref,
                                                     "network": InceptionFeatures.name})
    print(f"FID {value:.3f} ({len(images)} images against {n_ref} reference, {reference})")
    if not args.clip:
        print(CLIP_SKIPPED)
        return
    clip = ClipScore.from_pretrained(args.clip, run.device)
    for start in range(0, len(images), 16):
        clip.update(images[start:start + 16], prompts[start:start + 16])
    score = clip.compute()
    run.store.set_metric("clip_score", score, clip.n, {"clip": args.clip, "text": "original prompts"})
    print(f"CLIP score {score:.2f} ({clip.n} images, {args.clip})")
