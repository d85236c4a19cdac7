"""``amsmooth attack``: data-contract CSV, resume per prompt, refusal of other settings, one-line errors."""
from __future__ import annotations

import csv
import json

import pytest

from amsmooth.cli.main import main
from amsmooth.prompts import read_prompt_csv

FAST = ["--iterations", "2", "--population", "6", "--tokens", "4", "--no-progress"]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n"
                    "7,a cat on a sofa,11,7.5\n8,a red car in the rain,12,\n9,two people at a beach,13,\n",
                    encoding="utf-8")
    return path


def _rows(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _attack(*extra):
    return main(["attack", "rab", "--encoder", "tiny", "--concept", "nudity", *extra])


def test_writes_the_data_contract_ready_for_eval(tmp_path, prompts, capsys):
    out = tmp_path / "adv.csv"
    assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 0
    rows = _rows(out)
    assert [r["case_number"] for r in rows] == ["7", "8", "9"]
    assert rows[0]["evaluation_seed"] == "11" and rows[0]["evaluation_guidance"] == "7.5"
    assert rows[1]["source_prompt"] == "a red car in the rain" and rows[1]["attack"] == "rab"
    assert all(r["exact"] in ("True", "False") and float(r["loss"]) > 0 for r in rows)   # whole vocabulary
    settings = json.loads(rows[0]["settings"])
    assert settings["config"]["tokens"] == 4 and settings["config"]["budget"] == "reference"
    # explicit flags: the budget asked for was "reference", but the set says which settings are not
    assert settings["departs_from_reference"] == {"tokens": {"value": 4, "reference": 16},
                                                  "iterations": {"value": 2, "reference": 3000},
                                                  "population": {"value": 6, "reference": 200}}
    assert settings["adaptive"] is False and settings["seed"] == 0
    cases = read_prompt_csv(out)                      # what `amsmooth eval` reads
    assert [c.seed for c in cases] == [11, 12, 13] and cases[0].prompt == rows[0]["prompt"]
    text = capsys.readouterr().out
    assert "3 rab prompt(s) attacked now" in text
    assert "[NOT the reference settings: tokens 4 (reference 16), iterations 2 (reference 3000), " in text


def test_resumes_a_set_written_before_departures_were_recorded(tmp_path, prompts, capsys):
    out = tmp_path / "adv.csv"
    _attack("--prompts", str(prompts), "--out", str(out), "--limit", "1", *FAST)
    rows = _rows(out)
    old = json.loads(rows[0]["settings"])
    del old["departs_from_reference"]                  # as written by earlier versions
    rows[0]["settings"] = json.dumps(old, sort_keys=True, separators=(",", ":"))
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 0
    assert "2 rab prompt(s) attacked now, 1 already there" in capsys.readouterr().out


def test_resume_skips_finished_cases_and_matches_a_full_run(tmp_path, prompts, capsys):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    _attack("--prompts", str(prompts), "--out", str(full), *FAST)
    _attack("--prompts", str(prompts), "--out", str(part), "--limit", "1", *FAST)
    with part.open("a", encoding="utf-8") as f:       # a run killed while writing its next row
        f.write('8,"half a ro')
    assert _attack("--prompts", str(prompts), "--out", str(part), *FAST) == 0
    assert "2 rab prompt(s) attacked now, 1 already there" in capsys.readouterr().out
    assert _rows(part) == _rows(full)
    assert _attack("--prompts", str(prompts), "--out", str(part), *FAST) == 0
    assert "0 rab prompt(s) attacked now, 3 already there" in capsys.readouterr().out


def test_refuses_to_append_with_other_settings(tmp_path, prompts, capsys):
    out = tmp_path / "adv.csv"
    _attack("--prompts", str(prompts), "--out", str(out), "--limit", "1", *FAST)
    assert _attack("--prompts", str(prompts), "--out", str(out), "--seed", "1", *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "other settings (differing: seed)" in err


def test_adaptive_records_the_defense(tmp_path, prompts):
    out = tmp_path / "adv.csv"
    assert main(["attack", "concept-pgd", "--encoder", "tiny", "--prompts", str(prompts), "--out", str(out),
                 "--adaptive", "--preset", "uce-nudity", "--n", "3", "--iterations", "2", "--limit", "1",
                 "--no-progress"]) == 0
    row = _rows(out)[0]
    settings = json.loads(row["settings"])
    assert row["adaptive"] == "True" and row["prompt"].startswith("a cat on a sofa ")
    assert settings["smoothing"]["sigma0"] == 0.012 and settings["smoothing"]["use_global"] is True
    assert settings["smoothing"]["n"] == 3 and settings["config"]["loss"] == "cosine"


@pytest.mark.parametrize("argv, message", [
    (["attack", "gcg", "--encoder", "tiny"], "unknown attack 'gcg'"),
    (["attack", "uda", "--encoder", "tiny"], "--encoder is for the text-encoder attacks"),
    (["attack", "p4d"], "needs --model"),
    (["attack", "rab", "--model", "tiny"], "are for the U-Net attacks"),
    (["attack", "rab", "--encoder", "tiny", "--tokens", "0"], "tokens"),
    (["attack", "rab", "--encoder", "tiny", "--iterations", "-1"], "iterations"),
    (["attack", "rab", "--encoder", "tiny", "--step-size", "1"], "applies to 'concept-pgd', 'p4d' only"),
    (["attack", "rab", "--encoder", "tiny", "--preset", "esd-nudity"], "add --adaptive"),
    (["attack", "rab"], "give --encoder"),
])
def test_bad_input_is_one_clear_line(tmp_path, prompts, capsys, argv, message):
    assert main([*argv, "--prompts", str(prompts), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and message in err and "\n" not in err


def test_empty_prompt_sets_are_clear_errors(tmp_path, capsys):
    header_only = tmp_path / "empty.csv"
    header_only.write_text("case_number,prompt\n", encoding="utf-8")
    blank = tmp_path / "empty.txt"
    blank.write_text("\n\n", encoding="utf-8")
    for path in (header_only, blank):
        assert _attack("--prompts", str(path), "--out", str(tmp_path / "o.csv")) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and ("no rows" in err or "no prompts" in err)


def test_concept_for_another_encoder_is_one_clear_line(tmp_path, prompts, minilm_dir, capsys):
    concept = tmp_path / "nudity-tiny.safetensors"
    assert main(["concept", "build", "--pairs", str(_pairs()), "--encoder", "tiny", "--out", str(concept)]) == 0
    capsys.readouterr()
    assert main(["attack", "rab", "--encoder", minilm_dir, "--concept", str(concept), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "was built for" in err and "\n" not in err


def _pairs():
    from amsmooth.concepts import builtin_pairs_path

    return builtin_pairs_path("nudity")


def test_refuses_a_finished_case_with_another_source_prompt(tmp_path, prompts, capsys):
    out = tmp_path / "adv.csv"
    _attack("--prompts", str(prompts), "--out", str(out), "--limit", "1", *FAST)
    changed = tmp_path / "changed.csv"
    changed.write_text("case_number,prompt\n7,a dog on a sofa\n", encoding="utf-8")
    assert _attack("--prompts", str(changed), "--out", str(out), *FAST) == 2
    assert "case 7 was attacked from another prompt" in capsys.readouterr().err


# -- hardening, second pass (issue 28): two runs on one --out --------------------------------------------------


def test_a_case_another_live_attack_run_holds_is_left_to_it_then_taken_over(tmp_path, prompts, capsys):
    import sqlite3
    import subprocess
    import sys

    from amsmooth.eval.store import CaseClaims, process_owner

    out = tmp_path / "adv.csv"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        CaseClaims.beside(out).close()              # what a second `amsmooth attack` holds while it works on case 8
        with sqlite3.connect(tmp_path / ".adv.csv.claims") as db:
            db.execute("INSERT INTO claims VALUES ('attack', '8', ?, 0)", (process_owner(other.pid),))
        assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 0
        assert "2 rab prompt(s) attacked now, 0 already there, 1 being attacked by another process" in \
            capsys.readouterr().out
        assert [r["case_number"] for r in _rows(out)] == ["7", "9"]
    finally:
        other.kill()
        other.wait()
    assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 0      # its claim died with it
    assert "1 rab prompt(s) attacked now, 2 already there" in capsys.readouterr().out
    assert sorted(r["case_number"] for r in _rows(out)) == ["7", "8", "9"]


def test_two_attack_runs_on_one_out_share_the_cases_and_leave_a_resumable_file(tmp_path, capsys):
    import os
    import subprocess
    import sys

    prompts, out = tmp_path / "p.txt", tmp_path / "adv.csv"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(8)))
    argv = [sys.executable, "-m", "amsmooth.cli.main", "attack", "rab", "--encoder", "tiny", "--concept", "nudity",
            "--prompts", str(prompts), "--out", str(out), *FAST]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], results
    text = out.read_text(encoding="utf-8")
    assert text.count("case_number,prompt,") == 1                       # one header
    cases = [r["case_number"] for r in _rows(out)]
    assert sorted(cases, key=int) == [str(i) for i in range(8)]          # every case once, none twice
    assert main(["attack", "rab", "--encoder", "tiny", "--concept", "nudity", "--prompts", str(prompts),
                 "--out", str(out), *FAST]) == 0
    assert "0 rab prompt(s) attacked now, 8 already there" in capsys.readouterr().out


def test_disk_full_while_appending_a_row_cuts_it_and_keeps_the_file_resumable(tmp_path, prompts, capsys,
                                                                               monkeypatch):
    import errno
    import os

    from amsmooth.attacks import campaign as runner

    out = tmp_path / "adv.csv"
    assert _attack("--prompts", str(prompts), "--out", str(out), "--limit", "1", *FAST) == 0
    before = out.read_bytes()
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner.os, "fsync", full)
    assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"amsmooth: error: cannot write {out}: No space left on device") and "\n" not in err
    assert out.read_bytes() == before                                      # the row written before ENOSPC is cut
    monkeypatch.setattr(runner.os, "fsync", real)
    assert _attack("--prompts", str(prompts), "--out", str(out), *FAST) == 0
    assert "2 rab prompt(s) attacked now, 1 already there" in capsys.readouterr().out
