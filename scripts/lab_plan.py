"""Write the lab table's pre-registration: the plan, every prompt, the arms, the comparisons and the power analysis.

    python scripts/lab_plan.py --out docs/lab/v3/plan.json

Committed *before* the table runs, so that what the table reports was fixed before any of its images existed.
The prompts are the ones ``amsmooth lab table`` draws for the default plan (``Table.prompts``, deterministic); the
power analysis simulates the primary comparison under the stated assumptions (seeded, numpy).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from amsmooth.lab.report import FACTORS, PRIMARY, SECONDARY, paired
from amsmooth_experiments.lab_table import Plan, Table

ARMS = {
    "none": "the erased model, undefended",
    "blacklist": "the shipped word blacklist (words removed from the prompt)",
    "ams": "Adaptive Median Smoothing, Algorithm 1 relevance, σ0 and k chosen on the calibration split",
    "ams-equal": "the same smoothing with k = 0 (equal noise on every prompt token), σ0 chosen at the ams arm's "
                 "benign accuracy: is the adaptive part doing the work?",
    "ams-oracle": "σ from each token's effect on the erased U-Net's noise prediction toward the base model's concept "
                  "direction (amsmooth.model_relevance, eval --model-aware base), σ0 and k calibrated: an upper bound "
                  "on what any relevance score could give — is the failure the score or the mechanism?",
    "ams-subspace": "AMS with the concept-subspace relevance (issue 27, --relevance subspace: the text-only method "
                    "that scored attack tokens best on the lab encoder), σ0 and k calibrated like ams",
    "sld-max": "Safe Latent Diffusion, MAX preset",
    "safree": "SAFREE (Yoon et al., ICLR 2025; docs/baselines.md) at the reference's settings, its self-validating "
              "filtering on or off chosen on the calibration split",
}


def simulate(prompts: int, images: int, factor: float, rate: float = 0.4, spread: float = 2.0, reps: int = 300,
             seed: int = 0) -> dict[str, float]:
    """The paired comparison AMS − none over ``prompts`` prompts of ``images`` images each, simulated ``reps`` times
    when per-prompt undefended rates are Beta(rate·spread, (1 − rate)·spread) and AMS divides each by ``factor``:
    the mean half-width (points) of the 95 % bootstrap interval, and how often the interval of the reduction factor
    excludes each of FACTORS."""
    rng = np.random.default_rng(seed)
    widths, excludes = [], {f: 0 for f in FACTORS}
    for _ in range(reps):
        p = rng.beta(rate * spread, (1 - rate) * spread, prompts)
        x, y = rng.binomial(images, p / factor) / images, rng.binomial(images, p) / images
        r = paired(dict(enumerate(x)), dict(enumerate(y)), seed=int(rng.integers(2**32)), resamples=1000)
        widths.append(r["half_width"])
        for f in FACTORS:
            excludes[f] += bool(r["excludes"][str(f)])
    return {"half_width": round(float(np.mean(widths)), 1),
            **{f"excludes_{f}x": round(excludes[f] / reps, 2) for f in FACTORS}}


def prompts_of(plan: Plan) -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = Table(Path(tmp), plan).prompts()
        out = {}
        for name, path in sorted(paths.items()):
            with path.open(newline="", encoding="utf-8") as f:
                out[name] = list(dict.fromkeys(r["prompt"] for r in csv.DictReader(f)))
        return out


def power(plan: Plan) -> dict:
    images = len(plan.attack_seeds) * len(plan.image_seeds)
    pooled = plan.attack_prompts * len(plan.attacks)
    return {
        "assumptions": "undefended attack ASR 40 % on average, per-prompt rates Beta(0.8, 1.2); AMS divides each "
                       "prompt's rate by the factor; paired bootstrap over source prompts; 300 simulated tables",
        "images_per_attack_prompt": images,
        "pooled_prompts": pooled,
        **{f"if the true factor is {f}x": {"one attack": simulate(plan.attack_prompts, images, f),
                                           "pooled over attacks": simulate(pooled, images, f)} for f in FACTORS},
        "reading": "excludes_F: the share of simulated tables whose factor interval excludes F (the power to rule F "
                   "out when the other factor is true)",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    plan = Plan()
    record = {
        "what": "the lab table v3 (issue 24), pre-registered: written before any of its images were made",
        "command": "amsmooth lab table --batch-size 16 --out OUT (resumable; each step's wall time in "
                   "OUT/timing.json)",
        "plan": json.loads(json.dumps(asdict(plan))),
        "arms": {d: ARMS[d] for d in plan.defenses},
        "primary": [f"{a} − {b}, per erased model, paired over every attack set's source prompts" for a, b in PRIMARY],
        "secondary": [f"{a} − {b}, same pairing" for a, b in SECONDARY] + ["the same comparisons per attack set"],
        "analysis": "a prompt's value is the share of its images flagged (attack sets: over its attack and image "
                    "seeds); a − b is the mean over prompts of the per-prompt difference, with a 95 % percentile "
                    "bootstrap over prompts (10,000 resamples, seed 0); the reduction factor b / a uses the same "
                    "resamples; the table 'tells 1.6× from 3.7×' when the factor's interval excludes one of them. "
                    "Computed by amsmooth.lab.report.paired_section into OUT/table.md and table.json",
        "revision": "v3.1 (2026-12-07), before any of the table's images existed: the first v3 plan (3 image seeds, "
                    "3 concept-set seeds, a full calibration grid) measured 1.1 s per lab image on this 2-core "
                    "machine, ~16 h for both models against the issue's 8 h; v3.1 keeps 25 prompts and 25 attack "
                    "sources per set, takes the issue's two image seeds (seeds and image_seeds (0, 1)), one image "
                    "seed per attacked calibration prompt, and calibrates by a search (Table.calibrate: σ0 ascending "
                    "within each k, a trial's concept images only if its benign accuracy clears the floor); the "
                    "arms, grids, prompts, budgets and comparisons are unchanged",
        "rules": ["AMS arms' σ0 and k chosen on the calibration split only (calibration.json keeps every trial); "
                  "never on the table's prompts; the search and its rules are Table.calibrate's docstring",
                  "erasure settings (Plan.esd, Plan.uce; esd_args, uce_args before 2026-12-07) are v2's, fixed "
                  "before any attack runs",
                  "the attacks' budgets are LAB_BUDGETS['lab-v3'] (amsmooth_experiments.lab_table), labelled, not "
                  "the references'",
                  "a second run with other image seeds (scripts/lab_reseed.py) is reported beside the first; a "
                  "conclusion stands only if its interval survives both"],
        "power": power(plan),
        "prompts": prompts_of(plan),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {json.dumps(record['power'], ensure_ascii=False)}")


if __name__ == "__main__":
    main()
