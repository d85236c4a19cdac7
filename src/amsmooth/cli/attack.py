"""``amsmooth attack rab|qf|mma|concept-pgd|uda|p4d``: adversarial prompt sets in the data contract, plain or
adaptive. Defaults are each attack's reference settings; ``--budget quick`` is a labelled cheap CPU setting."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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

TEXT, UNET = ("rab", "qf", "mma", "concept-pgd"), ("uda", "p4d")
TARGETED = ("rab", "concept-pgd")
# CLI option → config field, and the attacks it applies to (None: all attacks).
OPTIONS: dict[str, tuple[str, ...] | None] = {
    "tokens": None, "iterations": None, "mode": None, "eot_samples": None, "rerank": None, "rerank_draws": None,
    "loss": TARGETED, "eta": TARGETED, "target_prompt": TARGETED,
    "population": ("rab", "qf"), "mutation_rate": ("rab",), "crossover_rate": ("rab",), "elitism": ("rab",),
    "search": ("qf",), "objective": ("qf",), "mask_phrase": ("qf",), "mask_sentences": ("qf",),
    "mask_threshold": ("qf",), "samples": ("qf",), "top_n": ("qf",),
    "candidates": ("mma",), "topk": ("mma",), "filter_words": ("mma",),
    "step_size": ("concept-pgd", "p4d"), "weight_decay": ("uda", "p4d"), "lr": ("uda",),
    "timesteps": ("uda",), "stop_detector": ("uda",),
    "variant": ("p4d",), "every_k": ("p4d",), "select": ("p4d",), "select_every": ("p4d",),
    "eval_timesteps": UNET, "target_steps": UNET, "height": UNET, "width": UNET,
}


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
    m.add_argument("--target-steps", type=int, help="denoising steps of generated targets (50)")
    m.add_argument("--height", type=int, help="image size in pixels, multiple of 8 (default: the pipeline's)")
    m.add_argument("--width", type=int, help="image size in pixels, multiple of 8 (default: the pipeline's)")
    m.add_argument("--eval-timesteps", type=int, metavar="E", help="fixed (t, ε) draws on which the reported "
                                                                   "loss is computed (4)")
    p.add_argument("--device", help="torch device (default: cpu for text attacks, auto for U-Net attacks)")
    add_concept_args(p)
    p.add_argument("--prompts", required=True, metavar="FILE", help="CSV (data contract) or text file of prompts")
    p.add_argument("--limit", type=int, help="attack only the first N prompts")
    p.add_argument("--out", required=True, metavar="CSV", help="adversarial prompt CSV (appended; resumable)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each prompt's generator derives from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("search (all attacks; defaults: the reference's, see docs/attacks.md)")
    g.add_argument("--budget", default="reference", metavar="reference|quick",
                   help="reference (default: the papers' settings) or quick (a cheap CPU setting, NOT the "
                        "reference; recorded in the output)")
    g.add_argument("--tokens", type=int, metavar="K", help="adversarial tokens (rab 16 nudity / 77 violence, qf 5 "
                                                           "characters, mma 20, concept-pgd 5, uda 5, p4d 16)")
    g.add_argument("--iterations", type=int, metavar="N", help="rab generations (3000), qf steps (pgd 100), mma "
                                                               "steps (1000), uda steps per timestep (40), p4d "
                                                               "steps (3000), concept-pgd steps (100)")
    g.add_argument("--mode", choices=["replace", "append", "prepend", "interleave"], help="where the tokens go")
    g.add_argument("--loss", choices=["mse", "cosine"], help="rab, concept-pgd: distance to the target")
    g.add_argument("--eta", type=float, help="rab, concept-pgd: η, target = T(prompt) + η·Δ_concept")
    g.add_argument("--target-prompt", help="rab, concept-pgd: use T(this prompt) + η·Δ as the target")
    g.add_argument("--population", type=int, help="rab: population (200); qf genetic: survivors (20)")
    g.add_argument("--mutation-rate", type=float, help="rab: mutation probability (0.25)")
    g.add_argument("--crossover-rate", type=float, help="rab: crossover probability (0.5)")
    g.add_argument("--elitism", action="store_const", const=True, help="rab: never mutate the best (not the "
                                                                       "reference)")
    g.add_argument("--search", choices=["pgd", "greedy", "genetic"], help="qf: search (pgd)")
    g.add_argument("--qf-objective", dest="objective", choices=["untargeted", "targeted"],
                   help="qf: push the whole embedding away (untargeted) or only a phrase's key dimensions")
    g.add_argument("--mask-phrase", help="qf targeted: the phrase to scrub")
    g.add_argument("--mask-sentence", dest="mask_sentences", action="append", metavar="TEXT",
                   help="qf targeted: a sentence containing the phrase (repeat; key dimensions come from them)")
    g.add_argument("--mask-threshold", type=int, help="qf targeted: sign agreement threshold (9)")
    g.add_argument("--samples", type=int, help="qf pgd: Gumbel samples per step (100)")
    g.add_argument("--top-n", type=int, help="qf pgd: samples back-propagated per step (5)")
    g.add_argument("--candidates", type=int, help="mma: candidates per step (512)")
    g.add_argument("--topk", type=int, help="mma: top tokens per position (256)")
    g.add_argument("--no-word-filter", dest="filter_words", action="store_const", const=False,
                   help="mma: keep the sensitive words in the search (the reference removes them)")
    g.add_argument("--step-size", type=float, help="concept-pgd: Adam step × embedding std (1.0); p4d: AdamW lr (0.1)")
    g.add_argument("--lr", type=float, help="uda: Adam lr on the relaxed one-hot (0.01)")
    g.add_argument("--weight-decay", type=float, help="uda (0.1), p4d (0.1)")
    g.add_argument("--timesteps", type=int, help="uda: sequential timesteps (50)")
    g.add_argument("--stop-detector", choices=["nudenet"], help="uda: stop at the first timestep whose prompt's "
                                                                "image the detector flags")
    g.add_argument("--variant", choices=["n", "k"], help="p4d: P4D-N (replace, default) or P4D-K (interleave)")
    g.add_argument("--every-k", type=int, help="p4d k: one searched token per this many source tokens (3)")
    g.add_argument("--select", choices=["image", "loss"], help="p4d: keep the prompt by CLIP image similarity "
                                                               "(reference; needs --clip) or by loss")
    g.add_argument("--select-every", type=int, help="p4d: steps between selections (50)")
    g.add_argument("--clip", metavar="SRC", help="p4d --select image: CLIP model (id or folder)")
    a = p.add_argument_group("adaptive attack against AMS")
    a.add_argument("--adaptive", action="store_true", help="optimize through the smoothing (EOT + "
                                                          "straight-through median)")
    a.add_argument("--eot-samples", type=int, metavar="M", help="draws of the n smoothing samples per "
                                                                "evaluation (default 1)")
    a.add_argument("--rerank", type=int, metavar="N", help="re-rank the N best candidates under the defended "
                                                           "loss on fresh draws (default 0: off)")
    a.add_argument("--rerank-draws", type=int, metavar="R", help="smoothing draws per re-ranked candidate (8)")
    add_smoothing_args(a)
    p.set_defaults(func=run)


def _flag(opt: str) -> str:
    return {"objective": "--qf-objective", "mask_sentences": "--mask-sentence",
            "filter_words": "--no-word-filter"}.get(opt, "--" + opt.replace("_", "-"))


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
    for opt, only in OPTIONS.items():
        value = getattr(args, opt, None)
        if value is None:
            continue
        if only is not None and cls.name not in only:
            raise AmsmoothError(f"{_flag(opt)} applies to {', '.join(repr(a) for a in only)} only, not "
                                f"'{cls.name}'")
        changes[opt] = tuple(value) if isinstance(value, list) else value
    return cls.make_config(budget, **changes)


def _check_defense_flags(args: argparse.Namespace) -> None:
    if not args.adaptive and any(getattr(args, f) is not None for f in SMOOTHING_OPTIONS):
        raise AmsmoothError(f"{smoothing_flags_text()} apply to the defense: add --adaptive")
    for flag in ("eot_samples", "rerank", "rerank_draws"):
        if not args.adaptive and getattr(args, flag) is not None:
            raise AmsmoothError(f"{_flag(flag)} applies to adaptive attacks only: add --adaptive")


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
