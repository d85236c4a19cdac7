"""``amsmooth unlearn esd|uce|rece|race``: erase a concept from a pipeline's U-Net; writes ``.safetensors`` + a
JSON sidecar."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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


def run(args: argparse.Namespace) -> int:
    from ..unlearn.erase import UnlearnRequest, unlearn

    _check_flags(args)
    erase = erase_texts(args)
    settings = method_settings(args)
    uce_like = args.method_name in ("uce", "rece")
    request = UnlearnRequest(
        args.method_name, args.model, tuple(erase), settings, Path(args.out), unet=args.unet,
        guide=tuple(args.guide) if uce_like and args.guide else None,
        preserve=tuple(preserve_texts(args)) if uce_like else (),      # a bad --preserve-file fails before loading
        pretrained_esd=getattr(args, "pretrained_esd", None), seed=args.seed, device=args.device,
        concept=args.concept if not args.erase else None, budget=args.budget or "reference",
        overwrite=args.overwrite, progress=not args.no_progress)
    info = unlearn(request)
    out = request.out
    print(f"wrote {out} (+ {out.with_suffix('.json').name}): {args.method_name.upper()} erasing {erase}, "
          f"{info['changed_tensors']} tensors changed, {info['timings']['unlearn_s']:.1f} s")
    return 0
