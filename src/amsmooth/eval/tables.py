"""Paper-style report from one or more RUN_DIRs: Table 1 (ASR per prompt set, average, FID, CLIP), Table 2 (time
per image), and a robustness-vs-utility plot (average ASR against FID, one point per model/defense row).

ASR of a prompt set = flagged images / scored images of that set (every image counts, K per case); Average =
unweighted mean of a row's prompt-set ASRs, as in the paper's Table 1.

A row is one (model, defense setting). Runs with the same row are pooled: a robustness run gives ASR columns, a
utility run gives FID / CLIP (the first run given wins if two have one), and every run's timed images give
Table 2. The config keys read are ``model``
(or ``model_label``), ``defense``, ``defense_config`` (or ``label``) and ``detector``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AmsmoothError
from .store import ResultStore

PLOT_NAME = "report.png"
REPORT_NAME = "report.md"


@dataclass
class RunSummary:
    """The numbers of one RUN_DIR."""

    run_dir: Path
    config: dict[str, Any]
    counts: dict[str, tuple[int, int]]  # prompt set → (flagged, scored)
    seconds: float                      # summed generation time of timed images
    timed: int                          # images with a time
    metrics: dict[str, float]


@dataclass
class Row:
    """One line of the tables: a model and a defense setting, pooled over runs."""

    model: str
    defense: str
    counts: dict[str, list[int]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    timed: int = 0
    detectors: set[str] = field(default_factory=set)

    def asr(self, prompt_set: str) -> float | None:
        """ASR in % of one prompt set; None when the set was not scored for this row."""
        flagged, scored = self.counts.get(prompt_set, (0, 0))
        return 100.0 * flagged / scored if scored else None

    def average(self, prompt_sets: Sequence[str]) -> tuple[float | None, bool]:
        """Unweighted mean ASR over the row's scored sets; the flag says whether every column was scored."""
        values = [a for a in (self.asr(s) for s in prompt_sets) if a is not None]
        return (sum(values) / len(values) if values else None), len(values) == len(prompt_sets)


def summarize(store: ResultStore) -> RunSummary:
    """Counts per prompt set (rows with a detector verdict), total time and metrics of one store."""
    counts: dict[str, list[int]] = {}
    seconds, timed = 0.0, 0
    for r in store.rows():
        if r.flagged is not None:
            c = counts.setdefault(r.prompt_set, [0, 0])
            c[0] += int(r.flagged)
            c[1] += 1
        if r.seconds is not None:
            seconds, timed = seconds + r.seconds, timed + 1
    metrics = {name: m.value for name, m in store.metrics().items()}
    return RunSummary(store.run_dir, store.config, {k: (v[0], v[1]) for k, v in counts.items()}, seconds, timed,
                      metrics)


def model_label(config: dict[str, Any]) -> str:
    if config.get("model_label"):
        return str(config["model_label"])
    model = str(config.get("model") or "?")
    return Path(model.rstrip("/")).name if "/" in model and Path(model).exists() else model


def _scalars(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (config.get("defense_config") or {}).items() if not isinstance(v, (dict, list))}


def defense_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Row labels: ``label`` if given, else the defense name plus the settings that differ between runs of
    that defense (``ams (sigma0=0.006)`` vs ``ams (sigma0=0.012)``); ``none`` reads "w/o defense"."""
    labels = []
    for cfg in configs:
        if cfg.get("label"):
            labels.append(str(cfg["label"]))
            continue
        name = str(cfg.get("defense") or "?")
        peers = [_scalars(c) for c in configs if c.get("defense") == name and not c.get("label")]
        keys = sorted({k for p in peers for k in p if len({repr(q.get(k)) for q in peers}) > 1})
        base = "w/o defense" if name == "none" else name
        own = _scalars(cfg)
        labels.append(f"{base} ({', '.join(f'{k}={own.get(k)}' for k in keys)})" if keys else base)
    return labels


def detector_rule(config: dict[str, Any]) -> str | None:
    """The run's detector and its flagging rule in words, from the config's ``detector`` entry."""
    det = config.get("detector")
    if not isinstance(det, dict):
        return str(det) if det else None
    if det.get("classes"):
        rule = f"flagged when any of {len(det['classes'])} classes ≥ {det.get('threshold')}"
    elif "threshold" in det:
        rule = f"flagged when p ≥ {det['threshold']}"
    elif det.get("rule"):                                   # the lab's detectors describe their rule in words
        rule = f"flagged when {det['rule']}"
    else:
        rule = "its default flagging rule"
    return f"{det.get('name', '?')} ({rule})"


def merge(summaries: Sequence[RunSummary]) -> list[Row]:
    """Pool runs into rows keyed by (model, defense label), in order of first appearance."""
    rows: dict[tuple[str, str], Row] = {}
    for s, label in zip(summaries, defense_labels([s.config for s in summaries]), strict=True):
        row = rows.setdefault((model_label(s.config), label), Row(model_label(s.config), label))
        for name, (flagged, scored) in s.counts.items():
            c = row.counts.setdefault(name, [0, 0])
            c[0], c[1] = c[0] + flagged, c[1] + scored
        row.metrics.update({k: v for k, v in s.metrics.items() if k not in row.metrics})
        row.seconds, row.timed = row.seconds + s.seconds, row.timed + s.timed
        if s.counts and detector_rule(s.config):
            row.detectors.add(str(detector_rule(s.config)))
    return list(rows.values())


def prompt_sets(rows: Sequence[Row]) -> list[str]:
    """Column order: prompt sets in order of first appearance."""
    out: list[str] = []
    for row in rows:
        out += [s for s in row.counts if s not in out]
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table1(rows: Sequence[Row]) -> str:
    """Markdown in the shape of the paper's Table 1: ASR (%) per prompt set, Average, FID, CLIP."""
    sets = prompt_sets(rows)
    head = ["Model", "Defense", *sets, "Average", "FID ↓", "CLIP ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for row in rows:
        avg, complete = row.average(sets)
        cells = [row.model, row.defense, *(_fmt(row.asr(s), 2) for s in sets),
                 _fmt(avg, 2) + ("" if complete or avg is None else " *"),
                 _fmt(row.metrics.get("fid"), 3), _fmt(row.metrics.get("clip_score"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table2(rows: Sequence[Row]) -> str:
    """Markdown in the shape of the paper's Table 2: mean generation time per image."""
    lines = ["| Model | Defense | Time per image (s) | Images timed |", "|---|---|---:|---:|"]
    for row in rows:
        if row.timed:
            lines.append(f"| {row.model} | {row.defense} | {row.seconds / row.timed:.3f} | {row.timed} |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str | Path) -> int:
    """Scatter of average ASR (%) against FID, one labelled point per row having both; returns the point count
    (no file is written when it is 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = prompt_sets(rows)
    points = [(r.metrics["fid"], r.average(sets)[0], f"{r.model} · {r.defense}") for r in rows
              if "fid" in r.metrics and r.average(sets)[0] is not None]
    if not points:
        return 0
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot()
    for fid, asr, label in points:
        ax.scatter([fid], [asr])
        ax.annotate(label, (fid, asr), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("FID ↓ (utility)")
    ax.set_ylabel("average ASR % ↓ (robustness)")
    ax.set_title("Robustness vs utility (lower-left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return len(points)


def load_summaries(run_dirs: Sequence[str | Path]) -> list[RunSummary]:
    """One summary per distinct RUN_DIR (a directory given twice counts once)."""
    if not run_dirs:
        raise AmsmoothError("no run directories given")
    seen, out = set(), []
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:
            seen.add(key)
            with ResultStore.read(d) as store:
                out.append(summarize(store))
    return out


def render(rows: Sequence[Row]) -> str:
    """The whole Markdown report (both tables with the definitions under them)."""
    detectors = sorted({d for r in rows for d in r.detectors})
    notes = ["ASR = flagged images / scored images of each prompt set (%); Average = unweighted mean of the row's "
             "prompt-set ASRs (* = over fewer sets than the columns); blank = not measured.",
             "Detectors: " + ("; ".join(detectors) if detectors else "none") + "."]
    return "\n".join(["## Table 1 — robustness (ASR % ↓) and utility", "", table1(rows), "", *notes, "",
                      "## Table 2 — inference time", "", table2(rows), ""])


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 with_plot: bool = True) -> tuple[str, Path | None]:
    """Build the report of ``run_dirs``, write ``report.md`` (and ``report.png``) into ``out_dir`` (default: the
    first RUN_DIR); returns the Markdown and the plot path (None when no row has both ASR and FID)."""
    rows = merge(load_summaries(run_dirs))
    out = Path(out_dir or run_dirs[0])
    text = render(rows)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_NAME).write_text(text, encoding="utf-8")
        png = out / PLOT_NAME
        return text, (png if with_plot and plot(rows, png) else None)
    except OSError as e:
        raise AmsmoothError(f"cannot write the report into {out}: {e.strerror or e}") from None
