"""``amsmooth attack rab|qf-pgd|uda|p4d``: adversarial prompt sets in the data contract, plain or adaptive."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import AmsmoothError
from ..prompts import PromptCase, read_prompts_file
from .common import add_concept_args, add_encoder_args, add_smoothing_args, load_concepts, load_encoder, \
    smoothing_config

if TYPE_CHECKING:
    from ..concepts import Concept
    from ..encoders import TextEncoder

TEXT, UNET = ("rab", "qf-pgd"), ("uda", "p4d")
# CLI option → config field, and the attacks it applies to (None: all attacks).
OPTIONS: dict[str, tuple[str, ...] | None] = {
    "budget": None, "iterations": None, "mode": None, "eot_samples": None,
    "loss": TEXT, "eta": TEXT, "target_prompt": TEXT,
    "population": ("rab",), "mutation_rate": ("rab",), "crossover_rate": ("rab",),
    "step_size": ("qf-pgd", *UNET),
    "timesteps_per_step": UNET, "eval_timesteps": UNET, "target_steps": UNET, "height": UNET, "width": UNET,
}
SMOOTHING_FLAGS = ("preset", "sigma0", "sigma_unit", "k", "n", "use_global", "noise_special_tokens")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="generate adversarial prompts (Ring-A-Bell, QF-PGD, UnlearnDiffAtk, P4D), "
                                      "optionally adaptive against AMS")
    p.add_argument("attack", metavar="ATTACK", help="text-encoder attacks (need --encoder): rab (Ring-A-Bell), "
                                                    "qf-pgd (QF-PGD); U-Net attacks (need --model, --unet): uda "
                                                    "(UnlearnDiffAtk), p4d (P4D)")
    add_encoder_args(p, required=False)
    m = p.add_argument_group("diffusion model (U-Net attacks uda/p4d only)")
    m.add_argument("--model", metavar="SRC", help="the original pipeline: Hugging Face id, diffusers folder or "
                                                  "'tiny' (random, for smoke runs)")
    m.add_argument("--unet", metavar="PATH", help="the unlearned U-Net (attacked): diffusers folder, .safetensors, "
                                                  ".pt/.ckpt (as for `amsmooth generate`); default: the original")
    m.add_argument("--target-images", metavar="DIR", help="target images {case_number}.png (default: generated "
                                                          "by the original U-Net from the prompt and its seed)")
    m.add_argument("--target-steps", type=int, help="denoising steps of generated targets (50)")
    m.add_argument("--height", type=int, help="image size in pixels, multiple of 8 (default: the pipeline's)")
    m.add_argument("--width", type=int, help="image size in pixels, multiple of 8 (default: the pipeline's)")
    m.add_argument("--timesteps-per-step", type=int, metavar="S", help="(t, ε) draws per gradient step (1)")
    m.add_argument("--eval-timesteps", type=int, metavar="E", help="fixed (t, ε) draws on which candidates are "
                                                                   "compared and the result scored (4)")
    p.add_argument("--device", help="torch device (default: cpu for text attacks, auto for U-Net attacks)")
    add_concept_args(p)
    p.add_argument("--prompts", required=True, metavar="FILE", help="CSV (data contract) or text file of prompts")
    p.add_argument("--limit", type=int, help="attack only the first N prompts")
    p.add_argument("--out", required=True, metavar="CSV", help="adversarial prompt CSV (appended; resumable)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each prompt's generator derives from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("search (all attacks)")
    g.add_argument("--budget", type=int, metavar="K", help="number of adversarial tokens (rab 16, qf-pgd 5, "
                                                           "uda 5, p4d 16)")
    g.add_argument("--iterations", type=int, metavar="N", help="generations (rab, 200) or gradient steps "
                                                               "(qf-pgd 100, uda 40, p4d 100)")
    g.add_argument("--mode", choices=["replace", "append", "prepend"],
                   help="replace the prompt (rab, p4d), append (qf-pgd) or prepend (uda) the K tokens")
    g.add_argument("--loss", choices=["mse", "cosine"], help="text attacks: distance to the target (rab mse, "
                                                             "qf-pgd cosine)")
    g.add_argument("--eta", type=float, help="text attacks: η, target = T(prompt) + η·Δ_concept (default 3)")
    g.add_argument("--target-prompt", help="text attacks: use T(this prompt) + η·Δ as the target")
    g.add_argument("--population", type=int, help="rab: population size (200)")
    g.add_argument("--mutation-rate", type=float, help="rab: mutation probability (0.25)")
    g.add_argument("--crossover-rate", type=float, help="rab: crossover probability (0.5)")
    g.add_argument("--step-size", type=float, help="qf-pgd, uda, p4d: Adam step in units of the embedding std "
                                                   "(1.0)")
    a = p.add_argument_group("adaptive attack against AMS")
    a.add_argument("--adaptive", action="store_true", help="optimize through the smoothing (EOT + "
                                                          "straight-through median)")
    a.add_argument("--eot-samples", type=int, metavar="M", help="draws of the n smoothing samples per "
                                                                "evaluation (default 1)")
    add_smoothing_args(a)
    p.set_defaults(func=run)


def _flag(opt: str) -> str:
    return "--" + opt.replace("_", "-")


def attack_config(args: argparse.Namespace, cls: type):  # noqa: ANN201 - the attack's config dataclass
    """The attack's config from its defaults and the given flags; flags of another attack are refused."""
    names = {f.name for f in fields(cls.config_class)}
    changes = {}
    for opt, only in OPTIONS.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if only is not None and cls.name not in only:
            raise AmsmoothError(f"{_flag(opt)} applies to {', '.join(repr(a) for a in only)} only, not "
                                f"'{cls.name}'")
        if opt in names:
            changes[opt] = value
    return cls.config_class(**changes)


def _check_defense_flags(args: argparse.Namespace) -> None:
    if not args.adaptive and any(getattr(args, f) is not None for f in SMOOTHING_FLAGS):
        raise AmsmoothError("--preset/--sigma0/--k/--n/--global apply to the defense: add --adaptive")
    if not args.adaptive and args.eot_samples is not None:
        raise AmsmoothError("--eot-samples applies to adaptive attacks only: add --adaptive")


def build_attack(args: argparse.Namespace, cases: Sequence[PromptCase] = ()):  # noqa: ANN201 - a TextAttack
    """The attack of ``args`` (text-encoder or U-Net), its defense if ``--adaptive``; ``cases`` are checked for
    target images before the model is loaded."""
    from ..attacks import UNET_ATTACKS, attack_class

    cls = attack_class(args.attack)
    config = attack_config(args, cls)
    _check_defense_flags(args)
    if cls.name in UNET_ATTACKS:
        return build_unet_attack(args, cls, config, cases)
    if args.model is not None or args.unet is not None or args.target_images is not None:
        raise AmsmoothError(f"--model/--unet/--target-images are for the U-Net attacks (uda, p4d); '{cls.name}' "
                            "needs --encoder only")
    if args.encoder is None:
        raise AmsmoothError(f"'{cls.name}' attacks the text encoder: give --encoder SRC")
    encoder = load_encoder(args.encoder, args.max_length, args.device)
    concept, defense = _concept_and_defense(args, encoder)
    return cls(encoder, concept, config, smoothing=defense)


def _concept_and_defense(args: argparse.Namespace, encoder: TextEncoder) -> tuple[Concept, Any]:
    """(first concept, AMS over all concepts or None): the defense's relevance needs the concepts."""
    from ..smoothing import AdaptiveMedianSmoothing

    smooth = smoothing_config(args)
    concepts = load_concepts(smooth.concepts, encoder)
    return concepts[0], (AdaptiveMedianSmoothing(encoder, concepts, smooth) if args.adaptive else None)


def build_unet_attack(args: argparse.Namespace, cls: type, config: Any,
                      cases: Sequence[PromptCase]):  # noqa: ANN201 - an UnlearnDiffAtk
    """UnlearnDiffAtk / P4D on --model's pipeline with the --unet U-Net attacked."""
    from ..attacks import DiffusionModels
    from ..attacks.targets import check_target_folder
    from ..loading import resolve_device
    from .common import quiet_libraries

    if args.encoder is not None or args.max_length is not None:
        raise AmsmoothError(f"--encoder is for the text-encoder attacks; '{cls.name}' uses the text encoder of "
                            "--model's pipeline")
    if args.model is None:
        raise AmsmoothError(f"'{cls.name}' optimizes through the diffusion U-Net and needs --model SRC (and the "
                            "unlearned --unet PATH)")
    if args.target_images is not None:
        check_target_folder(args.target_images, cases)
    if args.unet is None:
        print(f"amsmooth: warning: no --unet: attacking the original U-Net of {args.model}", file=sys.stderr)
    quiet_libraries()
    keep_original = cls.needs_original or args.target_images is None
    models = DiffusionModels.load(args.model, args.unet, keep_original, resolve_device(args.device or "auto"))
    concept, defense = _concept_and_defense(args, models.encoder)
    return cls(models, concept, config, smoothing=defense, target_images=args.target_images)


def run(args: argparse.Namespace) -> int:
    from ..attacks.runner import attack_cases

    if args.limit is not None and args.limit < 1:
        raise AmsmoothError(f"--limit must be >= 1, got {args.limit}")
    cases = read_prompts_file(args.prompts)[: args.limit]
    attack = build_attack(args, cases)
    before, now = attack_cases(attack, cases, args.out, args.seed, progress=not args.no_progress)
    kind = "adaptive " if attack.adaptive else ""
    print(f"wrote {args.out}: {now} {kind}{attack.name} prompt(s) attacked now, {before} already there "
          f"(seed {args.seed})", file=sys.stdout)
    return 0
