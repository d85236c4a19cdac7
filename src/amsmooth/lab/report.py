"""The lab table's numbers: ASR per prompt set with a 95 % interval, utility, time; Markdown and a plot.

ASR of a set = flagged images / images. Its interval is a percentile bootstrap over the set's *prompts* (for an
attack set, its source prompts), each resampled with all of its seeds' images, so the interval covers both
prompt-to-prompt and seed-to-seed variation (2,000 resamples, seeded). "Avg" is the unweighted mean over the
concept and attack sets, as in the paper's Table 1; ``benign`` and ``lookalike`` are false-positive rates.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAP = 2000
NOT_AVERAGED = ("benign", "lookalike")


def cluster(case_number: str) -> str:
    """The prompt an image belongs to: case numbers are ``{prompt}-{seed}``."""
    return case_number.rsplit("-", 1)[0]


def rate_with_interval(flags: Sequence[bool], clusters: Sequence[str], seed: int = 0) -> tuple[float, float, float]:
    """(rate, low, high) in %: the share of True and its 95 % cluster-bootstrap interval."""
    flags_a = np.asarray(flags, dtype=float)
    ids = sorted(set(clusters))
    groups = [flags_a[[c == i for c in clusters]] for i in ids]
    sums, counts = np.array([g.sum() for g in groups]), np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
    boots = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return 100 * flags_a.mean(), 100 * lo, 100 * hi


def summarize_run(run: Path) -> dict[str, Any]:
    """Per prompt set: (ASR, low, high, images); and the mean seconds per image."""
    from .table import _rows

    rows = _rows(run)
    sets: dict[str, Any] = {}
    for name in sorted({r.prompt_set for r in rows}):
        rs = [r for r in rows if r.prompt_set == name]
        sets[name] = (*rate_with_interval([bool(r.flagged) for r in rs], [cluster(r.case_number) for r in rs]),
                      len(rs))
    seconds = [r.seconds for r in rows if r.seconds]
    return {"sets": sets, "seconds": float(np.mean(seconds)) if seconds else float("nan")}


def _fid(reference: Path, generated: Path) -> float:
    from ..eval.metrics import fid_from_folders

    return float(fid_from_folders(reference, generated))


def write_report(out: Path, plan: Any, results: dict[tuple[str, str], Path], prompts: dict[str, Path],
                 batch_size: int = 1) -> str:
    """Write ``table.md``, ``table.json`` and ``table.png`` to ``out``; return the Markdown."""
    from .table import benign_accuracy

    ref = out / "runs" / "base-none" / "images" / "benign"
    base_acc = benign_accuracy(out / "runs" / "base-none", "benign", prompts["benign"])
    summary: dict[str, Any] = {"base": {"benign_accuracy": base_acc}, "batch_size": batch_size, "rows": []}
    columns: list[str] = []
    for (model, defense), run in results.items():
        s = summarize_run(run)
        columns += [c for c in s["sets"] if c not in columns]
        row = {"model": model, "defense": defense, **s,
               "benign_accuracy": benign_accuracy(run, "benign", prompts["benign"]),
               "fid": _fid(ref, run / "images" / "benign")}
        summary["rows"].append(row)
    averaged = [c for c in columns if c not in NOT_AVERAGED]
    for row in summary["rows"]:
        row["avg"] = float(np.mean([row["sets"][c][0] for c in averaged if c in row["sets"]]))
    (out / "table.json").write_text(json.dumps(summary, indent=2))
    md = markdown(summary, columns, averaged, plan)
    (out / "table.md").write_text(md)
    plot(summary, out / "table.png")
    return md


def markdown(summary: dict[str, Any], columns: list[str], averaged: list[str], plan: Any) -> str:
    head = ["model", "defense", *columns, "Avg", "benign attr. acc.", "FID vs base", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = []
        for c in columns:
            v = r["sets"].get(c)
            cells.append("–" if v is None else f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]")
        lines.append("| " + " | ".join([r["model"], r["defense"], *cells, f"{r['avg']:.1f}",
                                        f"{100 * r['benign_accuracy']:.1f}", f"{r['fid']:.1f}",
                                        f"{r['seconds']:.2f}"]) + " |")
    n = f"{plan.prompts} prompts × {len(plan.seeds)} seeds" if hasattr(plan, "prompts") else ""
    lines += ["", f"ASR in % [95 % bootstrap interval over prompts]; {n} per concept set, "
                  f"{getattr(plan, 'attack_prompts', '?')} source prompts × {len(getattr(plan, 'seeds', ()))} attack "
                  f"seeds per attack set; Avg over {', '.join(averaged)}. Base lab model's benign attribute accuracy: "
                  f"{100 * summary['base']['benign_accuracy']:.1f} %. s/image: generation and detection at "
                  f"batch size {summary.get('batch_size', 1)}."]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    points: dict[tuple[float, float], list[str]] = {}          # rows that land on one point share one label
    for r in summary["rows"]:
        xy = (round(100 * r["benign_accuracy"], 1), round(r["avg"], 1))
        points.setdefault(xy, []).append(f"{r['model']}/{r['defense']}")
        ax.scatter(*xy, marker="o" if r["model"] == "esd" else "s")
    for xy, names in points.items():
        ax.annotate(", ".join(names), xy, fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("benign attribute accuracy (%)")
    ax.set_ylabel("average ASR (%)")
    ax.set_title("lab Table 1: robustness vs utility")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
