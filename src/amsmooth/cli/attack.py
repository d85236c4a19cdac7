"""``amsmooth attack rab|qf-pgd|uda|p4d``: adversarial prompt sets in the data contract, plain or adaptive."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..errors import AmsmoothError
from ..prompts import read_prompts_file
from .common import add_concept_args, add_encoder_args, add_smoothing_args, load_concepts, load_encoder, \
    smoothing_config

# CLI option → config field, and the attacks it applies to (None: all text attacks).
OPTIONS = {
    "budget": None, "iterations": None, "mode": None, "loss": None, "eta": None, "target_prompt": None,
    "eot_samples": None, "population": "rab", "mutation_rate": "rab", "crossover_rate": "rab",
    "step_size": "qf-pgd",
}
SMOOTHING_FLAGS = ("preset", "sigma0", "k", "n", "use_global", "noise_special_tokens")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="generate adversarial prompts (Ring-A-Bell, QF-PGD), optionally adaptive "
                                      "against AMS")
    p.add_argument("attack", metavar="ATTACK", help="rab (Ring-A-Bell), qf-pgd (QF-PGD); uda, p4d: U-Net "
                                                    "attacks (need --model, not available yet)")
    add_encoder_args(p, required=False)
    p.add_argument("--model", metavar="SRC", help="diffusion pipeline (U-Net attacks uda/p4d only)")
    p.add_argument("--device", help="torch device for the encoder (default: cpu)")
    add_concept_args(p)
    p.add_argument("--prompts", required=True, metavar="FILE", help="CSV (data contract) or text file of prompts")
    p.add_argument("--limit", type=int, help="attack only the first N prompts")
    p.add_argument("--out", required=True, metavar="CSV", help="adversarial prompt CSV (appended; resumable)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each prompt's generator derives from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("search (all attacks)")
    g.add_argument("--budget", type=int, metavar="K", help="number of adversarial tokens (rab 16, qf-pgd 5)")
    g.add_argument("--iterations", type=int, metavar="N", help="generations (rab, 200) or steps (qf-pgd, 100)")
    g.add_argument("--mode", choices=["replace", "append"], help="replace the prompt (rab) or append (qf-pgd)")
    g.add_argument("--loss", choices=["mse", "cosine"], help="distance to the target (rab mse, qf-pgd cosine)")
    g.add_argument("--eta", type=float, help="η: target = T(prompt) + η·Δ_concept (default 3)")
    g.add_argument("--target-prompt", help="use T(this prompt) + η·Δ as the target (η = 0: the prompt alone)")
    g.add_argument("--population", type=int, help="rab: population size (200)")
    g.add_argument("--mutation-rate", type=float, help="rab: mutation probability (0.25)")
    g.add_argument("--crossover-rate", type=float, help="rab: crossover probability (0.5)")
    g.add_argument("--step-size", type=float, help="qf-pgd: Adam step in units of the embedding std (1.0)")
    a = p.add_argument_group("adaptive attack against AMS")
    a.add_argument("--adaptive", action="store_true", help="optimize through the smoothing (EOT + "
                                                          "straight-through median)")
    a.add_argument("--eot-samples", type=int, metavar="M", help="draws of the n smoothing samples per "
                                                                "evaluation (default 1)")
    add_smoothing_args(a)
    p.set_defaults(func=run)


def attack_config(args: argparse.Namespace, cls: type):  # noqa: ANN201 - the attack's config dataclass
    """The attack's config from its defaults and the given flags; flags of another attack are refused."""
    names = {f.name for f in fields(cls.config_class)}
    changes = {}
    for opt, only in OPTIONS.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if only is not None and only != cls.name:
            raise AmsmoothError(f"--{opt.replace('_', '-')} applies to '{only}' only, not '{cls.name}'")
        if opt in names:
            changes[opt] = value
    return cls.config_class(**changes)


def build_attack(args: argparse.Namespace):  # noqa: ANN201 - a TextAttack
    from ..attacks import attack_class
    from ..smoothing import AdaptiveMedianSmoothing

    cls = attack_class(args.attack)
    config = attack_config(args, cls)
    if not args.adaptive and any(getattr(args, f) is not None for f in SMOOTHING_FLAGS):
        raise AmsmoothError("--preset/--sigma0/--k/--n/--global apply to the defense: add --adaptive")
    if not args.adaptive and args.eot_samples is not None:
        raise AmsmoothError("--eot-samples applies to adaptive attacks only: add --adaptive")
    if args.model is not None:
        raise AmsmoothError(f"--model is for the U-Net attacks (uda, p4d); '{cls.name}' needs --encoder only")
    if args.encoder is None:
        raise AmsmoothError(f"'{cls.name}' attacks the text encoder: give --encoder SRC")
    smooth = smoothing_config(args)
    encoder = load_encoder(args.encoder, args.max_length, args.device)
    concepts = load_concepts(smooth.concepts, encoder)
    defense = AdaptiveMedianSmoothing(encoder, concepts, smooth) if args.adaptive else None
    return cls(encoder, concepts[0], config, smoothing=defense)


def run(args: argparse.Namespace) -> int:
    from ..attacks.runner import attack_cases

    if args.limit is not None and args.limit < 1:
        raise AmsmoothError(f"--limit must be >= 1, got {args.limit}")
    cases = read_prompts_file(args.prompts)[: args.limit]
    attack = build_attack(args)
    before, now = attack_cases(attack, cases, args.out, args.seed, progress=not args.no_progress)
    kind = "adaptive " if attack.adaptive else ""
    print(f"wrote {args.out}: {now} {kind}{attack.name} prompt(s) attacked now, {before} already there "
          f"(seed {args.seed})", file=sys.stdout)
    return 0
