"""``amsmooth attack rab|qf|mma|concept-pgd|uda|p4d``: adversarial prompt sets in the data contract, plain or
adaptive. Defaults are each attack's reference settings; ``--budget quick`` is a labelled cheap CPU setting."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from ..errors import AmsmoothError
from ..prompts import PromptCase, read_prompts_file
from .common import (
    SMOOTHING_OPTIONS,
    add_concept_args,
    add_encoder_args,
    add_smoothing_args,
    smoothing_config,
    smoothing_flags_text,
)
from .config_flags import argparse_kwargs, declaration, default_text, flag_fields, flag_name


@dataclass(frozen=True)
class AttackFlag:
    """A search flag of ``amsmooth attack``: a config field, the attacks whose config has it as a flag, and its
    ``add_argument`` keywords (help text included, its defaults read from the configs)."""

    name: str                     # --tokens
    dest: str                     # the config field
    attacks: tuple[str, ...]      # the attacks it applies to (in ATTACKS order)
    group: str                    # "model" (U-Net attacks' image settings), "adaptive" or "search"
    kwargs: dict[str, Any]


@cache
def attack_flags() -> dict[str, AttackFlag]:
    """Every attack config field with a "cli" text, by config field (dest), in field order."""
    from ..attacks import ATTACKS, SearchConfig, UNetAttackConfig
    from ..attacks.base import ADAPTIVE_SETTINGS

    owners: dict[str, list[type]] = {}
    for attack in ATTACKS.values():
        for f in flag_fields(attack.config_class):
            owners.setdefault(f.name, []).append(attack.config_class)
    model = {f.name for f in fields(UNetAttackConfig)} - {f.name for f in fields(SearchConfig)}
    out = {}
    for dest, configs in owners.items():
        kwargs = [argparse_kwargs(c, dest) for c in configs]
        names = {flag_name(c, dest) for c in configs}
        if len(names) > 1 or any(k != kwargs[0] for k in kwargs):
            raise TypeError(f"attack configs declare the flag of {dest!r} differently: {names}, {kwargs}")
        group = "adaptive" if dest in ADAPTIVE_SETTINGS else "model" if dest in model else "search"
        attacks = tuple(a for a, cls in ATTACKS.items() if cls.config_class in configs)
        out[dest] = AttackFlag(names.pop(), dest, attacks, group,
                               {**kwargs[0], "help": flag_help(dest, attacks, len(ATTACKS)).replace("%", "%%")})
    return out


def flag_help(dest: str, attacks: tuple[str, ...], total: int) -> str:
    """"adversarial tokens (rab …; qf 5 characters; …)": each attack's text and default, from its config."""
    from ..attacks import ATTACKS

    configs = {a: ATTACKS[a].config_class for a in attacks}
    texts = {a: str(declaration(c, dest)["cli"]) for a, c in configs.items()}
    defaults = {a: default_text(c, dest) for a, c in configs.items()}
    if len(set(texts.values())) > 1:                 # each attack its own meaning
        return "; ".join(f"{a}: {texts[a]}" + (f" (default {defaults[a]})" if defaults[a] else "") for a in attacks)
    text = texts[attacks[0]] if len(attacks) == total else f"{', '.join(attacks)}: {texts[attacks[0]]}"
    shown = {a: d for a, d in defaults.items() if d is not None}
    if not shown:
        return text
    if len(set(shown.values())) == 1 and len(shown) == len(attacks):
        return f"{text} (default {next(iter(shown.values()))})"
    return f"{text} ({'; '.join(f'{a} {d}' for a, d in shown.items())})"


def budget_help() -> str:
    """--budget's help: each attack's quick setting, from its ``quick`` table."""
    from ..attacks import ATTACKS

    flags = attack_flags()
    quick = "; ".join(f"{a} " + " ".join(f"{flags[k].name if k in flags else k} {v}" for k, v in cls.quick.items())
                      for a, cls in ATTACKS.items())
    return ("reference (default: the papers' settings) or quick (a cheap CPU setting, NOT the reference; recorded "
            f"in the output): {quick}")


def add_attack_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, group: str) -> None:
    for flag in attack_flags().values():
        if flag.group == group:
            p.add_argument(flag.name, **flag.kwargs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="generate adversarial prompts (Ring-A-Bell, QF-Attack, MMA-Diffusion, "
                                      "concept-PGD, UnlearnDiffAtk, P4D), optionally adaptive against AMS")
    p.add_argument("attack", metavar="ATTACK", help="text-encoder attacks (need --encoder): rab (Ring-A-Bell), qf "
                                                    "(QF-Attack), mma (MMA-Diffusion), concept-pgd (word-level "
                                                    "concept PGD); U-Net attacks (need --model, --unet): uda "
                                                    "(UnlearnDiffAtk), p4d (P4D-N / P4D-K)")
    add_encoder_args(p, required=False)
    m = p.add_argument_group("diffusion model (U-Net attacks uda/p4d only)")
    m.add_argument("--model", metavar="SRC", help="the original pipeline: Hugging Face id, diffusers folder or "
                                                  "'tiny' (random, for smoke runs)")
    m.add_argument("--unet", metavar="PATH", help="the unlearned U-Net (attacked): diffusers folder, .safetensors, "
                                                  ".pt/.ckpt (as for `amsmooth generate`); default: the original")
    m.add_argument("--target-images", metavar="DIR", help="target images {case_number}.png (default: generated "
                                                          "by the original U-Net from the prompt and its seed)")
    add_attack_flags(m, "model")
    p.add_argument("--device", help="torch device (default: cpu for text attacks, auto for U-Net attacks)")
    add_concept_args(p)
    p.add_argument("--prompts", required=True, metavar="FILE", help="CSV (data contract) or text file of prompts")
    p.add_argument("--limit", type=int, help="attack only the first N prompts")
    p.add_argument("--out", required=True, metavar="CSV", help="adversarial prompt CSV (appended; resumable)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each prompt's generator derives from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("search (all attacks; defaults: the reference's, see docs/attacks.md)")
    g.add_argument("--budget", default="reference", metavar="reference|quick", help=budget_help())
    add_attack_flags(g, "search")
    g.add_argument("--clip", metavar="SRC", help="p4d --select image: CLIP model (id or folder)")
    a = p.add_argument_group("adaptive attack against AMS")
    a.add_argument("--adaptive", action="store_true", help="optimize through the smoothing (EOT + "
                                                          "straight-through median)")
    add_attack_flags(a, "adaptive")
    add_smoothing_args(a)
    p.set_defaults(func=run)


def attack_config(args: argparse.Namespace, cls: type):  # noqa: ANN201 - the attack's config dataclass
    """The attack's config: reference defaults (or the quick budget), then the given flags; flags of another
    attack are refused."""
    budget = str(args.budget)
    if budget.isdigit():
        raise AmsmoothError(f"--budget selects reference|quick; the number of adversarial tokens is --tokens "
                            f"{budget}")
    if budget not in ("reference", "quick"):
        raise AmsmoothError(f"--budget must be reference or quick, got {budget!r}")
    changes = {}
    for dest, flag in attack_flags().items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if cls.name not in flag.attacks:
            raise AmsmoothError(f"{flag.name} applies to {', '.join(repr(a) for a in flag.attacks)} only, not "
                                f"'{cls.name}'")
        changes[dest] = tuple(value) if isinstance(value, list) else value
    return cls.make_config(budget, **changes)


def _check_defense_flags(args: argparse.Namespace) -> None:
    if not args.adaptive and any(getattr(args, f) is not None for f in SMOOTHING_OPTIONS):
        raise AmsmoothError(f"{smoothing_flags_text()} apply to the defense: add --adaptive")
    for dest, flag in attack_flags().items():
        if flag.group == "adaptive" and not args.adaptive and getattr(args, dest) is not None:
            raise AmsmoothError(f"{flag.name} applies to adaptive attacks only: add --adaptive")


def attack_request(args: argparse.Namespace):  # noqa: ANN201 - attacks.build.AttackRequest
    """The attack the flags describe: its config (reference or quick budget, then the flags), the concept(s) and
    AMS settings, and what it attacks."""
    from ..attacks import attack_class
    from ..attacks.build import AttackRequest

    cls = attack_class(args.attack)
    config = attack_config(args, cls)
    _check_defense_flags(args)
    return AttackRequest(cls.name, config, smoothing_config(args), adaptive=args.adaptive, encoder=args.encoder,
                         max_length=args.max_length, model=args.model, unet=args.unet,
                         target_images=args.target_images, clip=args.clip, device=args.device)


def build_attack(args: argparse.Namespace, cases: Sequence[PromptCase] = ()):  # noqa: ANN201 - a TextAttack
    """The attack of ``args`` (text-encoder or U-Net), its defense if ``--adaptive``; ``cases`` are checked for
    target images before the model is loaded."""
    from ..attacks.build import build_attack as build

    return build(attack_request(args), cases)


def run(args: argparse.Namespace) -> int:
    from ..attacks.campaign import attack_cases, describe_departures, summarize

    if args.limit is not None and args.limit < 1:
        raise AmsmoothError(f"--limit must be >= 1, got {args.limit}")
    cases = read_prompts_file(args.prompts)[: args.limit]
    attack = build_attack(args, cases)
    before, now, busy = attack_cases(attack, cases, args.out, args.seed, progress=not args.no_progress)
    kind = "adaptive " if attack.adaptive else ""
    label = describe_departures(attack.departures())
    others = f", {busy} being attacked by another process (rerun the command afterwards)" if busy else ""
    print(f"wrote {args.out}: {now} {kind}{attack.name} prompt(s) attacked now, {before} already there{others} "
          f"(seed {args.seed}){label}", file=sys.stdout)
    print(f"summary: {summarize(args.out, args.seed)}", file=sys.stdout)
    return 0
