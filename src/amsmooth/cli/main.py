"""``amsmooth`` command line: one module per subcommand, each with ``register(subparsers)``.

Start-up speed (issue 28): only the module of the command being run is imported, and only once its name is
known; ``amsmooth --help``, a missing or unknown command answer from ``COMMANDS`` below without importing any
command (so without torch, diffusers or transformers). These are lazy imports for start-up time, the one place
the CLI defers them, not imports moved into a function to dodge an import circle.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sqlite3
import sys
import warnings
from typing import NoReturn

from ..errors import AmsmoothError, first_line
from ..models.hub import quiet_environment, quiet_libraries
from ..prompts import seed_problem

# Subcommand modules under amsmooth.cli (each defines register(subparsers) and sets args.func), with the help
# line each gives its parser (tests/test_cli_core.py checks the two agree).
COMMANDS = {
    "certify": "certified bound on how far the smoothed conditioning can move (Theorem 3.2)",
    "concept": "build and inspect concept directions",
    "relevance": "score each prompt token's relevance to the concept(s) and its σ",
    "generate": "generate images with Adaptive Median Smoothing",
    "bench": "time the defense against undefended generation, SLD and U-Net smoothing",
    "report": "Table 1 (ASR per prompt set, FID, CLIP) and Table 2 (time per image) from run directories, plus "
              "an ASR-vs-FID plot",
    "attack": "generate adversarial prompts (Ring-A-Bell, QF-Attack, MMA-Diffusion, concept-PGD, "
              "UnlearnDiffAtk, P4D), optionally adaptive against AMS",
    "eval": "attack success rate of a defense on prompt sets (detector-scored, resumable, shardable with "
            "accelerate launch)",
    "utility": "FID and CLIP score of a defense on captions (e.g. COCO)",
    "lab": "the lab: a small text-to-image model trained here, to measure the defense end to end",
    "unlearn": "erase a concept from a model's U-Net (ESD, UCE, RECE, RACE)",
    "serve": "local web page + JSON API: token heatmap, undefended vs defended images, certificate",
}
MODULES = list(COMMANDS)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are amsmooth's one line (``amsmooth: error: …``, exit 2) instead of the usage
    text plus a line; its subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise AmsmoothError(f"{message} (see `{self.prog} --help`)")


def command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if it is one of ours."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; of the subcommands only the one ``argv`` names (all of them when ``argv`` is None) is
    imported and given its arguments, the others are names with their help line."""
    wanted = set(COMMANDS) if argv is None else {command_of(argv)}
    parser = Parser(prog="amsmooth", description="Adaptive Median Smoothing for concept-erased "
                                     "text-to-image diffusion models (Han et al., ICML 2025).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line in COMMANDS.items():
        if name in wanted:
            importlib.import_module(f"amsmooth.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_line)
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


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """A warning as the CLI prints it: ``amsmooth: warning: <first line>`` (not Python's file, line and source)."""
    return f"amsmooth: warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one line ``amsmooth: error: …`` and exits 2, never a traceback."""
    quiet_environment()        # before the commands import diffusers: no library chatter around our one line
    python_format, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(argv).parse_args(argv)
        warnings.filterwarnings("ignore", category=FutureWarning)
        check_numbers(args)
        quiet_libraries()
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
    finally:
        warnings.formatwarning = python_format     # in-process callers (lab table, tests) get Python's back


if __name__ == "__main__":
    sys.exit(main())
