"""Test helper (run as a script): write image rows into a RUN_DIR the way an eval run does, resuming.

    python tests/_store_writer.py RUN_DIR N DELAY_S [ORDER_SEED]

Skips keys already stored, commits one row per "image", prints ``wrote <case>`` after each commit, and
finally ``inserted <count>``.
"""
from __future__ import annotations

import random
import sys
import time

from amsmooth.eval.store import ImageResult, ResultStore

CONFIG = {"model": "tiny", "defense": "none", "defense_config": {}, "detector": {"name": "nudenet"}}


def write_rows(run_dir: str, n: int, delay: float = 0.0, order_seed: int | None = None) -> int:
    cases = list(range(n))
    if order_seed is not None:
        random.Random(order_seed).shuffle(cases)
    inserted = 0
    with ResultStore.open(run_dir, CONFIG) as store:
        done = store.done_keys("set")
        for i in cases:
            if ("set", str(i), 0) in done:
                continue
            row = ImageResult("set", str(i), 0, f"prompt {i}", "none", {}, seed=i, detector="nudenet",
                              scores={"FEET_EXPOSED": 0.7} if i % 3 == 0 else {}, flagged=i % 3 == 0,
                              seconds=0.01, image=f"images/set/{i}_0.png")
            inserted += store.add(row)
            print(f"wrote {i}", flush=True)
            time.sleep(delay)
    print(f"inserted {inserted}", flush=True)
    return inserted


if __name__ == "__main__":
    write_rows(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
               int(sys.argv[4]) if len(sys.argv) > 4 else None)
