"""``amsmooth report RUN_DIR…``: the paper's Table 1 / Table 2 as Markdown, and a robustness-vs-utility plot."""
from __future__ import annotations

import argparse

from ..eval.tables import PLOT_NAME, REPORT_NAME, write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Table 1 (ASR per prompt set, FID, CLIP) and Table 2 (time per image) "
                                      "from run directories, plus an ASR-vs-FID plot")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by eval / utility runs")
    p.add_argument("--out", metavar="DIR", help=f"where {REPORT_NAME} and {PLOT_NAME} go (default: the first RUN_DIR)")
    p.add_argument("--no-plot", action="store_true", help=f"do not write {PLOT_NAME}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text, png = write_report(args.run_dirs, args.out, with_plot=not args.no_plot)
    print(text)
    if png is not None:
        print(f"plot: {png}")
    elif not args.no_plot:
        print("plot: skipped (no row has both an ASR and a FID)")
    return 0
