"""``amsmooth unlearn esd|uce|rece|race``: erase a concept from a pipeline's U-Net; writes ``.safetensors`` + a
JSON sidecar."""
from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import AmsmoothError
from ..prompts import text_lines
from .config_flags import add_field_flag, flag_dest, flag_fields


@cache
def setting_flags() -> dict[str, dict[str, str]]:
    """Per settings group (esd, uce, rece, race): ``{flag dest: settings field}`` of the fields with a help text
    (amsmooth.config.option); RACE's --iterations (its own stage) and --esd-iterations are added by hand."""
    from ..unlearn.esd import ESDSettings
    from ..unlearn.race import RACESettings
    from ..unlearn.rece import RECESettings
    from ..unlearn.uce import UCESettings

    groups = {"esd": ESDSettings, "uce": UCESettings, "rece": RECESettings, "race": RACESettings}
    return {g: {flag_dest(cls, f.name): f.name for f in flag_fields(cls)} for g, cls in groups.items()}


@cache
def method_flags() -> dict[str, tuple[str, ...]]:
    """Which option dests each method takes (any other method's option is refused, not ignored)."""
    s = setting_flags()
    esd = (*s["esd"], "budget")
    uce = ("guide", "preserve", "preserve_file", *s["uce"])
    race = ("esd_iterations", "pretrained_esd", *s["race"])
    return {"esd": esd, "uce": uce, "rece": uce + tuple(s["rece"]), "race": esd + race}


METHODS = {"esd": "ESD (Gandikota et al. 2023): fine-tuning with negative guidance",
           "uce": "UCE (Gandikota et al. 2024): closed-form cross-attention edit",
           "rece": "RECE (Gong et al. 2024): UCE + closed-form erasure of adversarial embeddings",
           "race": "RACE (Kim et al. 2024): ESD + adversarial (PGD) training on the text embedding"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..unlearn.esd import ESDSettings
    from ..unlearn.race import QUICK_RACE, RACESettings
    from ..unlearn.rece import RECESettings
    from ..unlearn.uce import UCESettings

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
    e.add_argument("--budget", choices=["reference", "quick"], help=budget_help())
    iterations = (f"training iterations (default {ESDSettings().iterations}; race: of the adversarial stage, default "
                  f"{RACESettings().iterations}, its ESD stage: --esd-iterations)")
    for name in setting_flags()["esd"].values():
        add_field_flag(e, ESDSettings, name, flag_dest(ESDSettings, name),
                       help=iterations if name == "iterations" else None)
    u = p.add_argument_group("UCE, and RECE's first stage (defaults: the reference's; see docs/unlearn.md)")
    u.add_argument("--guide", action="append", metavar="TEXT",
                   help="what the erase texts are mapped to: one for all, or one per --erase (default: the empty "
                        "prompt, 'towards uncond')")
    u.add_argument("--preserve", action="append", metavar="TEXT", help="text to preserve (repeatable)")
    u.add_argument("--preserve-file", metavar="FILE", help="texts to preserve, one a line")
    for name in setting_flags()["uce"].values():
        add_field_flag(u, UCESettings, name, flag_dest(UCESettings, name))
    r = p.add_argument_group("RECE's adversarial rounds (defaults: the reference's nudity run)")
    for name in setting_flags()["rece"].values():
        add_field_flag(r, RECESettings, name, flag_dest(RECESettings, name))
    a = p.add_argument_group("RACE's adversarial stage (defaults: the reference's)")
    a.add_argument("--pretrained-esd", metavar="PATH",
                   help="start from this ESD U-Net (as the reference does) instead of training ESD first")
    esd_stage = RACESettings().esd.iterations
    a.add_argument("--esd-iterations", type=int, help=f"iterations of the ESD stage (default {esd_stage}; quick: "
                                                      f"{QUICK_RACE.esd.iterations})")
    for name in setting_flags()["race"].values():
        add_field_flag(a, RACESettings, name, flag_dest(RACESettings, name))
    p.set_defaults(func=run)


def budget_help() -> str:
    """--budget's help, from the reference and quick settings."""
    from ..unlearn.esd import QUICK, ESDSettings
    from ..unlearn.race import QUICK_RACE

    ref = ESDSettings()
    return (f"reference (default): {ref.iterations} iterations, {ref.ddim_steps} DDIM steps; quick: a labelled CPU "
            f"smoke setting, NOT the reference ({QUICK.iterations} iterations, {QUICK.ddim_steps} DDIM steps; race: "
            f"{QUICK_RACE.esd.iterations} ESD + {QUICK_RACE.iterations} RACE iterations); explicit flags override "
            "either")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse the other methods' flags instead of silently ignoring them."""
    mine = method_flags()[args.method_name]
    others = dict.fromkeys(f for flags in method_flags().values() for f in flags if f not in mine)
    given = [_flag(f) for f in others if getattr(args, f) is not None]
    if given:
        owners = sorted(m for m, flags in method_flags().items() if any(f.replace("-", "_")[2:] in flags
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
    fields = dict(setting_flags()["esd"])
    if args.method_name == "race":            # --iterations is RACE's own stage; the ESD stage's: --esd-iterations
        fields["esd_iterations"] = fields.pop("iterations")
    settings = replace(base, **_given(args, fields))
    settings.validate()
    return settings


def uce_settings(args: argparse.Namespace):  # noqa: ANN201 - UCESettings
    from dataclasses import replace

    from ..unlearn.uce import UCESettings

    settings = replace(UCESettings(), **_given(args, setting_flags()["uce"]))
    settings.validate()
    return settings


def rece_settings(args: argparse.Namespace):  # noqa: ANN201 - RECESettings
    from ..unlearn.rece import RECESettings

    settings = RECESettings(uce=uce_settings(args), **_given(args, setting_flags()["rece"]))
    settings.validate()
    return settings


def race_settings(args: argparse.Namespace):  # noqa: ANN201 - RACESettings
    from dataclasses import replace

    from ..unlearn.race import QUICK_RACE, RACESettings

    if args.pretrained_esd and args.esd_iterations is not None:
        raise AmsmoothError("--esd-iterations: no ESD stage runs when --pretrained-esd gives the ESD U-Net")
    base = QUICK_RACE if args.budget == "quick" else RACESettings()
    fields = {"iterations": "iterations", **setting_flags()["race"]}
    settings = replace(base, esd=esd_settings(args), **_given(args, fields))
    settings.validate()
    return settings


def method_settings(args: argparse.Namespace):  # noqa: ANN201 - the method's settings dataclass
    return {"esd": esd_settings, "uce": uce_settings, "rece": rece_settings, "race": race_settings}[
        args.method_name](args)


def unlearn_request(args: argparse.Namespace):  # noqa: ANN201 - unlearn.erase.UnlearnRequest
    """The typed request the flags describe (checked flags, texts and settings; nothing loaded)."""
    from ..unlearn.erase import UnlearnRequest

    _check_flags(args)
    erase = erase_texts(args)
    settings = method_settings(args)
    uce_like = args.method_name in ("uce", "rece")
    return UnlearnRequest(
        args.method_name, args.model, tuple(erase), settings, Path(args.out), unet=args.unet,
        guide=tuple(args.guide) if uce_like and args.guide else None,
        preserve=tuple(preserve_texts(args)) if uce_like else (),      # a bad --preserve-file fails before loading
        pretrained_esd=getattr(args, "pretrained_esd", None), seed=args.seed, device=args.device,
        concept=args.concept if not args.erase else None, budget=args.budget or "reference",
        overwrite=args.overwrite, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from ..unlearn.erase import unlearn

    request = unlearn_request(args)
    info = unlearn(request)
    out = request.out
    print(f"wrote {out} (+ {out.with_suffix('.json').name}): {args.method_name.upper()} erasing "
          f"{list(request.erase)}, {info['changed_tensors']} tensors changed, {info['timings']['unlearn_s']:.1f} s")
    return 0
