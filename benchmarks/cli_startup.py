"""Start-up time of the command line against ``python -c "import torch"`` (issue 28: at most 1.5×).

    python benchmarks/cli_startup.py            # 5 fresh processes each, interleaved; medians and the ratios
    python benchmarks/cli_startup.py --runs 9

Each command runs in a fresh interpreter (``sys.executable``), as a user's shell would start it; the runs of the
commands are interleaved so that a change in the machine's load hits all of them alike. Measured: ``amsmooth
--help``, an unknown command (an argument error) and, for comparison, ``amsmooth generate --help`` (which imports
the generate command and with it torch).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CLI = [sys.executable, "-m", "amsmooth.cli.main"]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "amsmooth --help": [*CLI, "--help"],
    "amsmooth no-such-command": [*CLI, "no-such-command"],
    "amsmooth generate --help": [*CLI, "generate", "--help"],
}


def seconds(argv: list[str]) -> float:
    """Wall time of one run of ``argv`` (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    runs = parser.parse_args().runs
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, argv in COMMANDS.items():
            times[name].append(seconds(argv))
    torch_s = statistics.median(times["import torch"])
    print(f"median of {runs} fresh processes each")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {median:6.3f} s   {median / torch_s:5.2f}× import torch")


if __name__ == "__main__":
    main()
