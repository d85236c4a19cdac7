"""Overhead benchmark (issue: the defense costs < 1 % of generation). Same as `amsmooth bench`.

    python benchmarks/overhead.py --quick            # ~5 min on 2 CPU cores
    python benchmarks/overhead.py --device cuda --dtype float16 --e2e-size 512 --e2e-steps 50
"""
import sys

from amsmooth.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
