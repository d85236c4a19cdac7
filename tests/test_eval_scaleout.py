"""Real processes: an eval killed with SIGKILL resumes exactly; two `accelerate launch` processes give the rows of
one process."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import amsmooth
from amsmooth.cli.main import main
from amsmooth.eval.store import DB_NAME, ResultStore

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--detector", "nudenet", "--defense", "ams",
        "--n", "3"]


def _env() -> dict[str, str]:
    src = str(Path(amsmooth.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cases(tmp_path: Path, n: int) -> str:
    path = tmp_path / "set.csv"
    path.write_text("case_number,prompt,evaluation_seed\n" +
                    "".join(f"{10 + i},a photo of subject {i},{100 + i}\n" for i in range(n)))
    return str(path)


def _count(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


@pytest.mark.slow   # 27 s: the CLI killed mid-run; the store's own kill -9 test stays in the default suite
def test_eval_killed_with_sigkill_resumes_exactly(tmp_path, capsys):
    run, n = tmp_path / "run", 12
    args = ["eval", *FAST, "--steps", "4", "--prompts", _cases(tmp_path, n), "--out", str(run)]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "amsmooth.cli.main", *args], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 240
        while _count(run / DB_NAME) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    with ResultStore.read(run) as store:
        before = store.rows()
    assert 2 <= len(before) < n                      # really cut short mid-run
    with sqlite3.connect(run / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    capsys.readouterr()
    assert main(args) == 0                           # the same command resumes
    assert f"{n - len(before)} new image(s), {len(before)} already done" in capsys.readouterr().out
    with ResultStore.read(run) as store:
        after = store.rows()
    keys = [r.key for r in after]
    assert len(after) == len(set(keys)) == n
    assert after[:len(before)] == before             # finished images were not redone
    assert all((run / r.image).is_file() for r in after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # 28 s: two real accelerate processes
def test_two_accelerate_processes_give_the_rows_of_one(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.is_file():
        pytest.skip("accelerate's launcher is not installed next to this Python")
    prompts = _cases(tmp_path, 4)
    args = [*FAST, "--steps", "2", "--images-per-prompt", "2", "--prompts", prompts]
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "amsmooth.cli.main", "eval", *args, "--device", "cpu", "--out", str(two)]
    done = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for i in (1, 2):                                 # cases 0, 2 → process 1; cases 1, 3 → process 2
        assert f"process {i}/2: 4 new image(s), 0 already done" in done.stdout
    assert main(["eval", *args, "--out", str(one)]) == 0

    def table(run: Path) -> dict:
        with ResultStore.read(run) as store:
            return {r.key: (r.seed, r.prompt, r.defense, r.defense_config, r.detector, r.scores, r.flagged,
                            (run / r.image).read_bytes()) for r in store.rows()}

    sharded, single = table(two), table(one)
    assert len(sharded) == 8 and sharded == single
    assert sorted(p.name for p in two.glob("*config*")) == ["config.json"]   # written once, no temp files left
