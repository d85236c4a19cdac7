"""``amsmooth unlearn esd|uce``: erase a concept from a pipeline's U-Net; writes ``.safetensors`` + a JSON sidecar."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import AmsmoothError
from ..prompts import text_lines

ESD_FLAGS = ("method", "iterations", "lr", "negative_guidance", "start_guidance", "ddim_steps", "sample_size",
             "budget")
UCE_FLAGS = ("guide", "preserve", "preserve_file", "lamb", "erase_scale", "preserve_scale", "technique")


def register(sub: argparse._SubParsersAction) -> None:
    from ..unlearn.esd import TRAIN_METHODS
    from ..unlearn.uce import TECHNIQUES

    p = sub.add_parser("unlearn", help="erase a concept from a model's U-Net (ESD fine-tuning or UCE closed-form "
                                       "edit)")
    p.add_argument("method_name", metavar="METHOD", choices=["esd", "uce"],
                   help="esd (Gandikota et al. 2023, fine-tuning) or uce (Gandikota et al. 2024, closed form)")
    p.add_argument("--model", required=True, metavar="SRC",
                   help="Stable Diffusion pipeline: Hugging Face id, local diffusers folder, or 'tiny'")
    p.add_argument("--unet", metavar="PATH", help="start from this U-Net instead of the model's own")
    p.add_argument("--concept", metavar="NAME", help="built-in erase texts: nudity, violence")
    p.add_argument("--erase", action="append", metavar="TEXT", help="erase text (repeatable); overrides --concept")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="unlearned U-Net (diffusers layout); a JSON sidecar FILE.json is written next to it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its sidecar)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 … (float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (esd; default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = p.add_argument_group("ESD (defaults: the reference's; see docs/unlearn.md)")
    e.add_argument("--method", choices=list(TRAIN_METHODS),
                   help="parameters to fine-tune: " + "; ".join(f"{k}: {v}" for k, v in TRAIN_METHODS.items())
                        + " (default u)")
    e.add_argument("--budget", choices=["reference", "quick"],
                   help="reference (default): 1000 iterations, 50 DDIM steps; quick: a labelled CPU smoke setting, "
                        "NOT the reference (50 iterations, 10 DDIM steps); explicit flags override either")
    e.add_argument("--iterations", type=int, help="training iterations (1000)")
    e.add_argument("--lr", type=float, help="Adam learning rate (1e-5)")
    e.add_argument("--negative-guidance", type=float, metavar="ETA", help="negative guidance η (1.0)")
    e.add_argument("--start-guidance", type=float, help="CFG scale when sampling x_t (3.0)")
    e.add_argument("--ddim-steps", type=int, help="DDIM steps of the x_t sampling (50)")
    e.add_argument("--sample-size", type=int, help="side of x_t in U-Net units (default: the U-Net's sample_size; "
                                                   "smaller is cheaper on a CPU)")
    u = p.add_argument_group("UCE (defaults: the reference's; see docs/unlearn.md)")
    u.add_argument("--guide", action="append", metavar="TEXT",
                   help="what the erase texts are mapped to: one for all, or one per --erase (default: the empty "
                        "prompt, 'towards uncond')")
    u.add_argument("--preserve", action="append", metavar="TEXT", help="text to preserve (repeatable)")
    u.add_argument("--preserve-file", metavar="FILE", help="texts to preserve, one a line")
    u.add_argument("--lamb", type=float, help="regularisation λ towards the original weights (0.5)")
    u.add_argument("--erase-scale", type=float, help="weight of the erase terms (1.0)")
    u.add_argument("--preserve-scale", type=float,
                   help="weight of the preserve terms (default max(0.1, 1/number of preserved texts, the empty "
                        "prompt included))")
    u.add_argument("--technique", choices=list(TECHNIQUES), help="targets: replace (default) or tensor")
    p.set_defaults(func=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse the other method's flags instead of silently ignoring them."""
    other, name = (UCE_FLAGS, "uce") if args.method_name == "esd" else (ESD_FLAGS, "esd")
    given = [_flag(f) for f in other if getattr(args, f) is not None]
    if given:
        raise AmsmoothError(f"{', '.join(given)}: option(s) of `unlearn {name}`, not of `unlearn "
                            f"{args.method_name}`")


def erase_texts(args: argparse.Namespace) -> list[str]:
    from ..unlearn import concept_texts
    from ..unlearn.esd import check_texts

    if args.erase:
        return check_texts(args.erase, "--erase")
    if args.concept:
        return concept_texts(args.concept)
    raise AmsmoothError("nothing to erase: give --concept NAME (nudity, violence) or --erase TEXT")


def preserve_texts(args: argparse.Namespace) -> list[str]:
    from ..unlearn.esd import check_texts

    texts = list(args.preserve or [])
    if args.preserve_file:
        try:
            lines = text_lines(Path(args.preserve_file).read_text(encoding="utf-8"))   # \n only, not U+2028
        except (OSError, UnicodeDecodeError) as e:
            raise AmsmoothError(f"cannot read --preserve-file {args.preserve_file}: "
                                f"{getattr(e, 'strerror', None) or e}") from None
        texts += [s.strip() for s in lines if s.strip()]
        if not texts:
            raise AmsmoothError(f"--preserve-file {args.preserve_file} holds no text")
    return check_texts(texts, "--preserve") if texts else []


def esd_settings(args: argparse.Namespace):  # noqa: ANN201 - ESDSettings
    from dataclasses import replace

    from ..unlearn.esd import QUICK, ESDSettings

    base = QUICK if args.budget == "quick" else ESDSettings()
    changes = {f: getattr(args, f) for f in ("method", "iterations", "lr", "negative_guidance", "start_guidance",
                                             "ddim_steps", "sample_size") if getattr(args, f) is not None}
    settings = replace(base, **changes)
    settings.validate()
    return settings


def uce_settings(args: argparse.Namespace):  # noqa: ANN201 - UCESettings
    from dataclasses import replace

    from ..unlearn.uce import UCESettings

    changes = {f: getattr(args, f) for f in ("lamb", "erase_scale", "preserve_scale", "technique")
               if getattr(args, f) is not None}
    settings = replace(UCESettings(), **changes)
    settings.validate()
    return settings


def _versions() -> dict[str, str]:
    import diffusers

    from .. import __version__

    return {"amsmooth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


def run(args: argparse.Namespace) -> int:
    from ..hub import quiet_libraries
    from ..loading import load_pipeline, resolve_device
    from ..unlearn import check_output, esd, save_unet, uce

    _check_flags(args)
    erase = erase_texts(args)
    out = check_output(args.out, args.overwrite)
    if args.method_name == "esd":
        settings = esd_settings(args)
    else:
        settings = uce_settings(args)
        preserve = preserve_texts(args)
        if args.guide and len(args.guide) not in (1, len(erase)):
            raise AmsmoothError(f"{len(args.guide)} --guide texts for {len(erase)} erase texts; give one --guide, "
                                f"or one per --erase")
    device = resolve_device(args.device)
    quiet_libraries()
    started = time.perf_counter()
    pipe = load_pipeline(args.model, unet=args.unet, device=device)
    loaded = time.perf_counter()
    info: dict[str, Any] = {"method": args.method_name, "model": args.model, "unet": args.unet,
                            "concept": args.concept if not args.erase else None, "erase": erase,
                            "settings": settings.to_dict(), "device": str(device), "dtype": "float32"}
    if args.method_name == "esd":
        losses: list[float] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.iterations, desc=f"ESD-{settings.method}", unit="it", file=sys.stderr,
                   disable=args.no_progress)

        def progress(it: int, loss: float) -> None:
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")

        state = esd(pipe, erase, settings, torch.Generator().manual_seed(args.seed), progress=progress)
        bar.close()
        info.update(seed=args.seed, losses=losses)
    else:
        state = uce(pipe, erase, guide=args.guide, preserve=preserve, settings=settings)
        info.update(seed=None, guide=args.guide, towards_uncond=not args.guide, preserve=preserve)
    done = time.perf_counter()
    original = pipe.unet.state_dict()
    changed = sorted(k for k, v in state.items() if not torch.equal(v, original[k].to("cpu")))
    info.update(changed_tensors=len(changed), changed_parameters=sum(state[k].numel() for k in changed),
                timings={"load_s": round(loaded - started, 3), "unlearn_s": round(done - loaded, 3)},
                versions=_versions())
    if args.method_name == "esd":
        info["timings"]["per_iteration_s"] = round((done - loaded) / settings.iterations, 4)
    save_unet(state, out, info)
    print(f"wrote {out} (+ {out.with_suffix('.json').name}): {args.method_name.upper()} erasing {erase}, "
          f"{len(changed)} tensors changed, {done - loaded:.1f} s")
    return 0
