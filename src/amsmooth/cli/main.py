"""``amsmooth`` command line: one module per subcommand, each with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import math
import sqlite3
import sys
import warnings
from typing import NoReturn

from ..errors import AmsmoothError, first_line
from ..hub import quiet_libraries
from ..prompts import seed_problem

# Subcommand modules under amsmooth.cli (each defines register(subparsers) and sets args.func).
MODULES = [
    "certify",
    "concept",
    "relevance",
    "generate",
    "bench",
    "report",
    "attack",
    "eval",
    "utility",
    "lab",
    "unlearn",
    "serve",
]


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are amsmooth's one line (``amsmooth: error: …``, exit 2) instead of the usage
    text plus a line; its subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise AmsmoothError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="amsmooth", description="Adaptive Median Smoothing for concept-erased "
                                     "text-to-image diffusion models (Han et al., ICML 2025).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"amsmooth.cli.{name}").register(sub)
    return parser


def check_numbers(args: argparse.Namespace) -> None:
    """Every float option must be finite (argparse's ``float`` takes ``nan``/``inf``), every seed in range."""
    for name, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise AmsmoothError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and seed_problem(seed):
        raise AmsmoothError(f"--seed: {seed_problem(seed)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one line ``amsmooth: error: …`` and exits 2, never a traceback."""
    quiet_libraries()          # before the commands import diffusers: no library chatter around our one line
    try:
        args = build_parser().parse_args(argv)
        warnings.filterwarnings("ignore", category=FutureWarning)
        check_numbers(args)
        return int(args.func(args) or 0)
    except AmsmoothError as e:
        print(f"amsmooth: error: {e}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.OperationalError) as e:   # disk full, read-only folder … where no writer said it
        print(f"amsmooth: error: {first_line(e)} (an operating-system error: free some space or fix the "
              "permissions, then rerun; finished work is kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amsmooth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
