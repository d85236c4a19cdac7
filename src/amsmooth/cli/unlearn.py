"""``amsmooth unlearn esd|uce|rece|race``: erase a concept from a pipeline's U-Net; writes ``.safetensors`` + a
JSON sidecar."""
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
RECE_FLAGS = ("epochs", "rece_lamb", "rece_erase_scale", "rece_preserve_scale", "regular_scale")
RACE_FLAGS = ("esd_iterations", "epsilon", "pgd_steps", "pgd_alpha", "adv_loss", "lasso", "pretrained_esd")
# which option groups each method takes (any other group's option is refused, not ignored)
METHOD_FLAGS = {"esd": ESD_FLAGS, "uce": UCE_FLAGS, "rece": UCE_FLAGS + RECE_FLAGS,
                "race": ESD_FLAGS + RACE_FLAGS}
METHODS = {"esd": "ESD (Gandikota et al. 2023): fine-tuning with negative guidance",
           "uce": "UCE (Gandikota et al. 2024): closed-form cross-attention edit",
           "rece": "RECE (Gong et al. 2024): UCE + closed-form erasure of adversarial embeddings",
           "race": "RACE (Kim et al. 2024): ESD + adversarial (PGD) training on the text embedding"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..unlearn.esd import TRAIN_METHODS
    from ..unlearn.race import ADV_LOSSES
    from ..unlearn.uce import TECHNIQUES

    p = sub.add_parser("unlearn", help="erase a concept from a model's U-Net (ESD, UCE, RECE, RACE)")
    p.add_argument("method_name", metavar="METHOD", choices=list(METHODS),
                   help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    p.add_argument("--model", required=True, metavar="SRC",
                   help="Stable Diffusion pipeline: Hugging Face id, local diffusers folder, or 'tiny'")
    p.add_argument("--unet", metavar="PATH", help="start from this U-Net instead of the model's own")
    p.add_argument("--concept", metavar="NAME", help="built-in erase texts: nudity, violence")
    p.add_argument("--erase", action="append", metavar="TEXT", help="erase text (repeatable); overrides --concept")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="unlearned U-Net (diffusers layout); a JSON sidecar FILE.json is written next to it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its sidecar)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 … (float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (esd, race; default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = p.add_argument_group("ESD, and RACE's training (defaults: the reference's; see docs/unlearn.md)")
    e.add_argument("--method", choices=list(TRAIN_METHODS),
                   help="parameters to fine-tune: " + "; ".join(f"{k}: {v}" for k, v in TRAIN_METHODS.items())
                        + " (default u)")
    e.add_argument("--budget", choices=["reference", "quick"],
                   help="reference (default): 1000 iterations, 50 DDIM steps; quick: a labelled CPU smoke setting, "
                        "NOT the reference (50 iterations, 10 DDIM steps; race: 50 ESD + 50 RACE iterations); "
                        "explicit flags override either")
    e.add_argument("--iterations", type=int, help="training iterations (1000; race: of the adversarial stage)")
    e.add_argument("--lr", type=float, help="Adam learning rate (1e-5)")
    e.add_argument("--negative-guidance", type=float, metavar="ETA", help="negative guidance η (1.0)")
    e.add_argument("--start-guidance", type=float, help="CFG scale when sampling x_t (3.0)")
    e.add_argument("--ddim-steps", type=int, help="DDIM steps of the x_t sampling (50)")
    e.add_argument("--sample-size", type=int, help="side of x_t in U-Net units (default: the U-Net's sample_size; "
                                                   "smaller is cheaper on a CPU)")
    u = p.add_argument_group("UCE, and RECE's first stage (defaults: the reference's; see docs/unlearn.md)")
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
    r = p.add_argument_group("RECE's adversarial rounds (defaults: the reference's nudity run)")
    r.add_argument("--epochs", type=int, help="adversarial rounds after UCE (5)")
    r.add_argument("--rece-lamb", type=float, help="λ of each round's edit (0.1)")
    r.add_argument("--rece-erase-scale", type=float, help="weight of the adversarial embeddings (1.0)")
    r.add_argument("--rece-preserve-scale", type=float, help="weight of the preserved texts in each round (0.1)")
    r.add_argument("--regular-scale", type=float, help="ρ, regulariser of the adversarial embedding (0.1)")
    a = p.add_argument_group("RACE's adversarial stage (defaults: the reference's)")
    a.add_argument("--pretrained-esd", metavar="PATH",
                   help="start from this ESD U-Net (as the reference does) instead of training ESD first")
    a.add_argument("--esd-iterations", type=int, help="iterations of the ESD stage (1000; quick: 50)")
    a.add_argument("--epsilon", type=float, help="L∞ radius of the embedding perturbation (0.1)")
    a.add_argument("--pgd-steps", type=int, help="PGD steps per iteration (10)")
    a.add_argument("--pgd-alpha", type=float, help="PGD step size (epsilon/4)")
    a.add_argument("--adv-loss", choices=list(ADV_LOSSES), help="the attack's denoising loss (l2)")
    a.add_argument("--lasso", type=float, nargs="?", const=0.1, metavar="LAMBDA",
                   help="add λ·L1(θ, θ_ESD) to the loss (the reference's --lasso: λ 0.1; off by default)")
    p.set_defaults(func=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse the other methods' flags instead of silently ignoring them."""
    mine = METHOD_FLAGS[args.method_name]
    others = dict.fromkeys(f for flags in METHOD_FLAGS.values() for f in flags if f not in mine)
    given = [_flag(f) for f in others if getattr(args, f) is not None]
    if given:
        owners = sorted(m for m, flags in METHOD_FLAGS.items() if any(f.replace("-", "_")[2:] in flags
                                                                       for f in given))
        raise AmsmoothError(f"{', '.join(given)}: option(s) of `unlearn {'|'.join(owners)}`, not of `unlearn "
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


def _given(args: argparse.Namespace, fields: dict[str, str]) -> dict[str, Any]:
    """{setting: value} of the flags (``{flag attribute: setting name}``) the user gave."""
    return {name: getattr(args, f) for f, name in fields.items() if getattr(args, f) is not None}


def esd_settings(args: argparse.Namespace):  # noqa: ANN201 - ESDSettings
    from dataclasses import replace

    from ..unlearn.esd import QUICK, ESDSettings

    base = QUICK if args.budget == "quick" else ESDSettings()
    fields = ("method", "lr", "negative_guidance", "start_guidance", "ddim_steps", "sample_size")
    iterations = "esd_iterations" if args.method_name == "race" else "iterations"
    settings = replace(base, **_given(args, {f: f for f in fields} | {iterations: "iterations"}))
    settings.validate()
    return settings


def uce_settings(args: argparse.Namespace):  # noqa: ANN201 - UCESettings
    from dataclasses import replace

    from ..unlearn.uce import UCESettings

    fields = ("lamb", "erase_scale", "preserve_scale", "technique")
    settings = replace(UCESettings(), **_given(args, {f: f for f in fields}))
    settings.validate()
    return settings


def rece_settings(args: argparse.Namespace):  # noqa: ANN201 - RECESettings
    from ..unlearn.rece import RECESettings

    fields = {"epochs": "epochs", "rece_lamb": "lamb", "rece_erase_scale": "erase_scale",
              "rece_preserve_scale": "preserve_scale", "regular_scale": "regular_scale"}
    settings = RECESettings(uce=uce_settings(args), **_given(args, fields))
    settings.validate()
    return settings


def race_settings(args: argparse.Namespace):  # noqa: ANN201 - RACESettings
    from dataclasses import replace

    from ..unlearn.race import QUICK_RACE, RACESettings

    if args.pretrained_esd and args.esd_iterations is not None:
        raise AmsmoothError("--esd-iterations: no ESD stage runs when --pretrained-esd gives the ESD U-Net")
    base = QUICK_RACE if args.budget == "quick" else RACESettings()
    fields = {"iterations": "iterations", "epsilon": "epsilon", "pgd_steps": "pgd_steps", "pgd_alpha": "alpha",
              "adv_loss": "adv_loss", "lasso": "lasso"}
    settings = replace(base, esd=esd_settings(args), **_given(args, fields))
    settings.validate()
    return settings


def method_settings(args: argparse.Namespace):  # noqa: ANN201 - the method's settings dataclass
    return {"esd": esd_settings, "uce": uce_settings, "rece": rece_settings, "race": race_settings}[
        args.method_name](args)


def _versions() -> dict[str, str]:
    import diffusers

    from .. import __version__

    return {"amsmooth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


def _check_guide(args: argparse.Namespace, erase: list[str]) -> None:
    if args.guide and len(args.guide) not in (1, len(erase)):
        raise AmsmoothError(f"{len(args.guide)} --guide texts for {len(erase)} erase texts; give one --guide, "
                            f"or one per --erase")


def _progress_bar(args: argparse.Namespace, total: int, desc: str):  # noqa: ANN202 - tqdm
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=args.no_progress)


def _run_esd(args: argparse.Namespace, pipe: Any, erase: list[str], settings: Any) -> tuple[dict, dict]:
    from ..unlearn import esd

    losses: list[float] = []
    bar = _progress_bar(args, settings.iterations, f"ESD-{settings.method}")

    def progress(it: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")

    state = esd(pipe, erase, settings, torch.Generator().manual_seed(args.seed), progress=progress)
    bar.close()
    return state, {"seed": args.seed, "losses": losses}


def _run_race(args: argparse.Namespace, pipe: Any, erase: list[str], settings: Any) -> tuple[dict, dict]:
    import copy

    from ..models.weights import load_unet_weights
    from ..unlearn import race

    start = None
    if args.pretrained_esd:
        unet = copy.deepcopy(pipe.unet)
        load_unet_weights(unet, args.pretrained_esd)
        start = unet.state_dict()
    bar = _progress_bar(args, settings.iterations + (0 if start else settings.esd.iterations), "ESD → RACE")

    def progress(stage: str, it: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{loss:.4g}")

    state, log = race(pipe, erase, settings, torch.Generator().manual_seed(args.seed), start=start,
                      progress=progress)
    bar.close()
    return state, {"seed": args.seed, "pretrained_esd": args.pretrained_esd, "esd_losses": log.esd_losses,
                   "losses": log.losses, "attack_losses": log.attack_losses}


def _run_uce(args: argparse.Namespace, pipe: Any, erase: list[str], settings: Any) -> tuple[dict, dict]:
    from ..unlearn import uce

    preserve = preserve_texts(args)
    state = uce(pipe, erase, guide=args.guide, preserve=preserve, settings=settings)
    return state, {"seed": None, "guide": args.guide, "towards_uncond": not args.guide, "preserve": preserve}


def _run_rece(args: argparse.Namespace, pipe: Any, erase: list[str], settings: Any) -> tuple[dict, dict]:
    from ..unlearn import rece

    preserve = preserve_texts(args)
    state, history = rece(pipe, erase, guide=args.guide, preserve=preserve, settings=settings)
    return state, {"seed": None, "guide": args.guide, "towards_uncond": not args.guide, "preserve": preserve,
                   "epochs": [h.to_dict() for h in history]}


RUNNERS = {"esd": _run_esd, "uce": _run_uce, "rece": _run_rece, "race": _run_race}


def run(args: argparse.Namespace) -> int:
    from ..models.hub import quiet_libraries
    from ..models.load import load_pipeline, resolve_device
    from ..models.weights import source_kind
    from ..unlearn import check_output, save_unet

    _check_flags(args)
    erase = erase_texts(args)
    out = check_output(args.out, args.overwrite)
    settings = method_settings(args)
    if args.method_name in ("uce", "rece"):
        _check_guide(args, erase)
        preserve_texts(args)                      # a bad --preserve-file fails before the model is loaded
    if getattr(args, "pretrained_esd", None):
        source_kind(args.pretrained_esd)          # a missing file fails before the model is loaded
    device = resolve_device(args.device)
    quiet_libraries()
    started = time.perf_counter()
    pipe = load_pipeline(args.model, unet=args.unet, device=device)
    loaded = time.perf_counter()
    info: dict[str, Any] = {"method": args.method_name, "model": args.model, "unet": args.unet,
                            "concept": args.concept if not args.erase else None, "erase": erase,
                            "budget": args.budget or "reference", "settings": settings.to_dict(),
                            "device": str(device), "dtype": "float32"}
    state, extra = RUNNERS[args.method_name](args, pipe, erase, settings)
    info.update(extra)
    done = time.perf_counter()
    original = pipe.unet.state_dict()
    changed = sorted(k for k, v in state.items() if not torch.equal(v, original[k].to("cpu")))
    info.update(changed_tensors=len(changed), changed_parameters=sum(state[k].numel() for k in changed),
                timings={"load_s": round(loaded - started, 3), "unlearn_s": round(done - loaded, 3)},
                versions=_versions())
    iterations = len(extra.get("losses", [])) + len(extra.get("esd_losses", []))
    if iterations:
        info["timings"]["per_iteration_s"] = round((done - loaded) / iterations, 4)
    save_unet(state, out, info)
    print(f"wrote {out} (+ {out.with_suffix('.json').name}): {args.method_name.upper()} erasing {erase}, "
          f"{len(changed)} tensors changed, {done - loaded:.1f} s")
    return 0
