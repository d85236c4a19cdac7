"""Results store: one row per image, resume after a crash (even kill -9), concurrent writers, config refusal."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from _cli_errors import one_line_error
from amsmooth import AmsmoothError
from amsmooth.cli.main import main
from amsmooth.eval.store import CONFIG_NAME, DB_NAME, ImageResult, ResultStore, config_diff

WRITER = Path(__file__).with_name("_store_writer.py")
CONFIG = {"model": "tiny", "defense": "ams", "defense_config": {"sigma0": 0.006, "k": 9.0}, "limit": 8}


def row(case: int, k: int = 0, flagged: bool | None = True, prompt_set: str = "uda") -> ImageResult:
    return ImageResult(prompt_set, str(case), k, f"prompt {case}", "ams", {"sigma0": 0.006}, seed=case,
                       detector="nudenet", scores={"FEET_EXPOSED": 0.61, "FACE_FEMALE": 0.3}, flagged=flagged,
                       seconds=1.5, image=f"{case}_{k}.png")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_rows_round_trip_and_config_written_once(tmp_path):
    with ResultStore.open(tmp_path / "run", CONFIG) as store:
        assert store.add(row(1)) and store.add(row(1, k=1, flagged=False))
        assert store.add(row(2, flagged=None))
        got = store.rows()
    assert [r.key for r in got] == [("uda", "1", 0), ("uda", "1", 1), ("uda", "2", 0)]
    assert got[0] == row(1)  # every field survives, scores JSON included
    assert got[1].flagged is False and got[2].flagged is None
    assert json.loads((tmp_path / "run" / CONFIG_NAME).read_text()) == CONFIG


def test_resume_keeps_rows_and_refuses_duplicates(tmp_path):
    run = tmp_path / "run"
    store = ResultStore.open(run, CONFIG)
    for case in range(5):
        store.add(row(case))
    del store  # a crash: no close(); the rows were committed one by one
    with ResultStore.open(run, CONFIG) as again:
        done = again.done_keys()
        assert done == {("uda", str(c), 0) for c in range(5)}
        assert again.done_keys("other-set") == set()
        assert again.add(row(3)) is False  # already there: nothing changes
        todo = [c for c in range(8) if ("uda", str(c), 0) not in done]
        assert todo == [5, 6, 7]
        assert all(again.add(row(c)) for c in todo)
        assert again.count() == 8
        keys = [r.key for r in again.rows()]
    assert len(keys) == len(set(keys)) == 8


def test_config_mismatch_is_refused_with_a_new_out_hint(tmp_path):
    run = tmp_path / "run"
    ResultStore.open(run, CONFIG).close()
    other = {**CONFIG, "defense_config": {"sigma0": 0.012, "k": 9.0}}
    with pytest.raises(AmsmoothError, match=r"defense_config\.sigma0.*new --out") as e:
        ResultStore.open(run, other)
    assert "\n" not in str(e.value)
    # a key declared volatile (e.g. --limit) may change between resumes
    ResultStore.open(run, {**CONFIG, "limit": 100}, volatile=["limit"]).close()
    with pytest.raises(AmsmoothError):
        ResultStore.open(run, {**CONFIG, "limit": 100})
    assert json.loads((run / CONFIG_NAME).read_text()) == CONFIG  # the stored config is never rewritten


def test_config_diff_paths():
    assert config_diff({"a": 1, "b": {"c": 2, "d": [1]}}, {"a": 1, "b": {"c": 3, "d": [1]}, "e": 0}) == ["b.c", "e"]
    assert config_diff({"a": (1, 2)}, {"a": (1, 2)}) == []


def test_unwritable_and_non_run_directories(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AmsmoothError, match="cannot write to the run directory"):
        ResultStore.open(blocker / "run", CONFIG)
    with pytest.raises(AmsmoothError, match="not a run directory"):
        ResultStore.read(tmp_path)


def test_metrics_are_stored_and_replaced(tmp_path):
    with ResultStore.open(tmp_path / "run", CONFIG) as store:
        store.set_metric("fid", 9.0, n=10, details={"reference": "coco"})
        store.set_metric("fid", 7.5, n=12, details={"reference": "coco"})
        store.set_metric("clip_score", 30.1, n=12)
    with ResultStore.read(tmp_path / "run") as store:
        m = store.metrics()
    assert m["fid"].value == 7.5 and m["fid"].n == 12 and m["fid"].details == {"reference": "coco"}
    assert set(m) == {"clip_score", "fid"}


def test_kill_9_mid_run_loses_nothing_and_resume_completes(tmp_path):
    """A writer is SIGKILLed mid-run: every row it reported as committed is in the DB, none twice; rerunning the
    same command writes exactly the missing rows."""
    run, n = str(tmp_path / "run"), 300
    proc = subprocess.Popen([sys.executable, str(WRITER), run, str(n), "0.01"], stdout=subprocess.PIPE,
                            text=True, env=_env())
    reported = []
    for line in proc.stdout:
        reported.append(line.split()[1])
        if len(reported) == 25:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(Path(run) / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = [c for (c,) in conn.execute("SELECT case_number FROM results")]
    conn.close()
    assert set(reported) <= set(stored)            # nothing committed was lost
    assert len(stored) == len(set(stored)) < n     # no duplicates; the run really was cut short
    out = subprocess.run([sys.executable, str(WRITER), run, str(n), "0"], capture_output=True, text=True,
                         env=_env(), check=True).stdout
    assert out.splitlines()[-1] == f"inserted {n - len(stored)}"
    with ResultStore.read(run) as store:
        keys = [r.key for r in store.rows()]
    assert len(keys) == len(set(keys)) == n


def test_two_processes_write_one_run_dir(tmp_path):
    """Two writers start together on a fresh RUN_DIR with the same cases in different orders: every image is
    stored exactly once and the inserts add up."""
    run, n = str(tmp_path / "run"), 120
    procs = [subprocess.Popen([sys.executable, str(WRITER), run, str(n), "0", str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for seed in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    inserted = [int(o[0].splitlines()[-1].split()[1]) for o in outs]
    assert sum(inserted) == n
    with ResultStore.read(run) as store:
        keys = [r.key for r in store.rows()]
    assert len(keys) == len(set(keys)) == n


def _stored_run(run_dir: Path) -> Path:
    from amsmooth.eval.store import ImageResult, ResultStore

    with ResultStore.open(run_dir, {"command": "eval", "defense": "none"}) as store:
        store.add(ImageResult("s", "1", 0, "a cat", "none", {}, 1, None, "nudenet", {"x": 0.1}, False, 1.0, "i.png"))
    return run_dir


def test_config_json_is_created_with_the_umask_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        run = _stored_run(tmp_path / "run")
    finally:
        os.umask(mask)
    assert (run / "config.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("update", ["scores = 'not json'", "defense_config = '[1]'", "seconds = 'slow'",
                                    "flagged = 7", "k = 'one'"])
def test_report_on_a_tampered_row_is_one_line_error(tmp_path, capsys, update):
    import sqlite3

    run = _stored_run(tmp_path / "run")
    with sqlite3.connect(run / "results.sqlite") as conn:
        conn.execute(f"UPDATE results SET {update}")
    assert main(["report", str(run)]) == 2
    assert "is damaged" in one_line_error(capsys)
