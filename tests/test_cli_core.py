"""CLI: concept build, relevance (table / jsonl), and one-line errors for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from amsmooth.cli.main import main
from amsmooth.concepts import builtin_pairs_path


def test_relevance_table_and_jsonl(capsys, minilm_dir):
    assert main(["relevance", "a nude woman on a beach", "--encoder", minilm_dir, "--concept", "nudity"]) == 0
    out = capsys.readouterr().out
    nude_row = next(line for line in out.splitlines() if " nude " in line and "prompt:" not in line)
    assert nude_row.startswith("▲")            # the nudity word is highlighted
    assert main(["relevance", "a nude woman", "", "--encoder", "tiny", "--concept", "nudity", "--format", "jsonl",
                 "--preset", "uce-nudity"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a nude woman", ""] and rows[1]["tokens"] == []
    assert set(rows[0]["tokens"][0]) == {"token", "word", "word_index", "position", "sim", "sim_local",
                                         "sim_global", "sigma"}
    assert rows[0]["tokens"][0]["sim_global"] is not None


def test_relevance_prompts_file_csv(tmp_path, capsys):
    f = tmp_path / "p.csv"
    f.write_text("case_number,prompt\n1,a cat\n2,a dog\n")
    assert main(["relevance", "--prompts-file", str(f), "--encoder", "tiny", "--format", "jsonl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_concept_build_and_use(tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["concept", "build", "--pairs", str(builtin_pairs_path("vangogh")), "--encoder", "tiny",
                 "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["relevance", "starry night", "--encoder", "tiny", "--concept", str(out)]) == 0


@pytest.mark.parametrize("argv,match", [
    (["relevance", "x", "--encoder", "tiny", "--sigma0", "-1"], "sigma0"),
    (["relevance", "x", "--encoder", "tiny", "--n", "0"], "n must be"),
    (["relevance", "x", "--encoder", "tiny", "--k", "nan"], "k must be"),
    (["relevance", "--encoder", "tiny"], "no prompts"),
    (["relevance", "x", "--encoder", "tiny", "--concept", "nope"], "unknown concept"),
    (["relevance", "x", "--encoder", "/nonexistent/folder-xyz"], "local folder"),
    (["relevance", "--prompts-file", "/nonexistent.csv", "--encoder", "tiny"], "not found"),
    # issue 28's audit: a length beyond the position embeddings was a RuntimeError traceback, 0 was ignored
    (["relevance", "x", "--encoder", "minilm", "--max-length", "100000"], "exceeds the 512 positions"),
    (["relevance", "x", "--encoder", "tiny", "--max-length", "0"], "--max-length must be >= 1"),
    (["relevance", "x", "--encoder", "minilm", "--max-length", "2"], "leaves no room for a prompt token"),
])
def test_errors_are_one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and match in err and "\n" not in err


def test_concept_build_errors_write_nothing(tmp_path, capsys):
    pairs = tmp_path / "p.csv"
    pairs.write_text("a,b\nx,y\n")
    out = tmp_path / "c.safetensors"
    assert main(["concept", "build", "--pairs", str(pairs), "--encoder", "tiny", "--out", str(out)]) == 2
    assert "cannot tell the positive/negative columns" in capsys.readouterr().err and not out.exists()
    assert main(["concept", "build", "--pairs", str(pairs), "--encoder", "tiny", "--out", str(out),
                 "--positive-column", "a", "--negative-column", "zz"]) == 2
    assert "missing column 'zz'" in capsys.readouterr().err and not out.exists()


def test_concept_for_another_encoder_is_refused(tmp_path, capsys, minilm_dir):
    out = tmp_path / "c.safetensors"
    assert main(["concept", "build", "--pairs", str(builtin_pairs_path("nudity")), "--encoder", "tiny",
                 "--out", str(out)]) == 0
    assert main(["relevance", "x", "--encoder", minilm_dir, "--concept", str(out)]) == 2
    err = capsys.readouterr().err
    assert "built for clip_text_model" in err and "encoder in use is bert" in err


def test_encoder_minilm_shortcut(capsys):
    assert main(["relevance", "a naked man", "--encoder", "minilm", "--format", "jsonl"]) == 0
    toks = json.loads(capsys.readouterr().out)["tokens"]
    assert max(toks, key=lambda t: t["sim"])["word"] == "naked"


def test_smoothing_flags_come_from_the_config_dataclass(monkeypatch):
    """Every SmoothingConfig field with a "cli" help text is a flag of every AMS command, parsed onto that field;
    a field added with such a text becomes a flag everywhere without touching the commands."""
    import argparse
    import dataclasses

    from amsmooth.cli import common
    from amsmooth.cli.main import build_parser
    from amsmooth.config import SmoothingConfig

    flags = {f.name: common.smoothing_flag(f) for f in common.smoothing_fields()}
    assert flags == {"sigma0": "--sigma0", "sigma_unit": "--sigma-unit", "k": "--k", "n": "--n",
                     "relevance": "--relevance", "use_global": "--global",
                     "noise_special_tokens": "--noise-special-tokens"}
    parser = build_parser()
    argv = ["--sigma0", "0.02", "--sigma-unit", "embedding-std", "--k", "4", "--global", "--noise-special-tokens"]
    for command in (["generate", "x", "--model", "tiny", "--out", "o"], ["relevance", "x", "--encoder", "tiny"],
                    ["eval", "--model", "tiny", "--defense", "ams", "--prompts", "p.csv", "--out", "o",
                     "--detector", "lab-nudity"],
                    ["attack", "rab", "--adaptive", "--prompts", "p.csv", "--out", "o.csv"]):
        args = parser.parse_args([*command, *argv, "--n", "5"])
        config = common.smoothing_config(args)
        assert (config.sigma0, config.sigma_unit, config.k, config.n, config.use_global,
                config.noise_special_tokens) == (0.02, "embedding-std", 4.0, 5, True, True), command
        assert common.smoothing_config(parser.parse_args([*command, "--relevance", "subspace"])).relevance == \
            "subspace", command
    # certify keeps --n for its own sample count
    args = parser.parse_args(["certify", "x", "--encoder", "tiny", "--rho", "0.1", "--n", "7", *argv])
    assert args.samples == 7 and common.smoothing_config(args).n == 13
    # a new field with a help text is picked up
    extra = dataclasses.make_dataclass("Extended", [("eps", float, dataclasses.field(
        default=0.5, metadata={"cli": "a test knob"}))], bases=(SmoothingConfig,), frozen=True)
    monkeypatch.setattr(common, "SmoothingConfig", extra)
    p = argparse.ArgumentParser()
    common.add_smoothing_args(p)
    assert p.parse_args(["--eps", "0.25"]).eps == 0.25
    assert "a test knob (default 0.5)" in p.format_help()


# -- hardening, second pass (issue 28) -----------------------------------------------------------------------


def test_concept_build_refuses_a_foreign_out_file_and_replaces_its_own(tmp_path, capsys):
    pairs = str(builtin_pairs_path("vangogh"))
    notes = tmp_path / "notes.safetensors"
    notes.write_bytes(b"my notes")
    assert main(["concept", "build", "--pairs", pairs, "--encoder", "tiny", "--out", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and was not written by `amsmooth concept build`" in err and "\n" not in err
    assert notes.read_bytes() == b"my notes"
    ours = tmp_path / "c.safetensors"
    for _ in range(2):                                   # rebuilding a concept file in place is allowed
        assert main(["concept", "build", "--pairs", pairs, "--encoder", "tiny", "--out", str(ours)]) == 0
    assert main(["concept", "build", "--pairs", pairs, "--encoder", "tiny", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_n_above_the_shared_bound_is_refused_as_the_server_refuses_it(capsys):
    from amsmooth.limits import SMOOTHING_N
    from amsmooth.serve.schemas import MAX_SMOOTHING_N

    assert MAX_SMOOTHING_N == SMOOTHING_N.high
    assert main(["relevance", "x", "--encoder", "tiny", "--n", "102"]) == 2
    assert "n must be >= 1 and <= 101, got 102" in capsys.readouterr().err


def test_disk_full_while_writing_a_concept_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("amsmooth.io.os.fsync", full)
    out = tmp_path / "c.safetensors"
    assert main(["concept", "build", "--pairs", str(builtin_pairs_path("vangogh")), "--encoder", "tiny",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"amsmooth: error: cannot write {out}: No space left on device") and "\n" not in err
    assert list(tmp_path.iterdir()) == []                # no temp file, no partial concept


def test_help_and_a_bad_command_answer_without_importing_torch() -> None:
    """Issue 28: `amsmooth --help` and a top-level argument error import no command, so no torch, diffusers or
    transformers (the speed itself is measured by benchmarks/cli_startup.py, not here)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom amsmooth.cli.main import main\n"
             "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules), code)")
    for argv, code in ((["--help"], 0), (["no-such-command"], 2), ([], 2)):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == f"HEAVY [] {code}", (argv, done.stdout, done.stderr)
        if code == 2:
            assert done.stderr.startswith("amsmooth: error: ") and len(done.stderr.splitlines()) == 1


def test_attack_help_builds_its_flags_from_the_configs_without_loading_diffusers() -> None:
    """`amsmooth attack --help` reads the attack config dataclasses (torch is imported with them) but not the
    pipelines: diffusers and transformers load only when an attack runs (13 s → 3.4 s on this machine)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom amsmooth.cli.main import main\n"
             "try:\n    main(['attack', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('HEAVY', sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "--population" in done.stdout and done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stderr


def test_the_help_table_matches_each_commands_own_parser() -> None:
    """`amsmooth --help` lists COMMANDS without importing them; each command's parser gives the same help line."""
    import argparse
    from pathlib import Path

    import amsmooth.cli
    from amsmooth.cli.main import COMMANDS, build_parser

    folder = Path(amsmooth.cli.__file__).parent
    assert set(COMMANDS) == {p.stem for p in folder.glob("*.py") if "def register(" in p.read_text()}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: a.help for a in sub._choices_actions} == COMMANDS


def test_a_warning_is_one_amsmooth_line_from_the_cli(capsys):
    """Issue 28: warnings reach the user as ``amsmooth: warning: …`` (not Python's file:line and source line),
    and a long prompt's warning carries no prompt text."""
    import warnings

    long = "secretword " * 90
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["relevance", long, "--encoder", "tiny", "--format", "jsonl"]) == 0
    import re

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.fullmatch(r"amsmooth: warning: 1 prompt\(s\) longer than 77 tokens were truncated "
                                          r"as the pipeline does \(the longest: \d+ tokens\)", err[0]), err
    assert warnings.formatwarning is not None and "amsmooth" not in warnings.formatwarning(
        "x", UserWarning, "f.py", 1, "")                        # Python's format is back after main()


def test_a_usage_error_is_one_line_from_a_fresh_process(tmp_path):
    """argparse's usage errors are amsmooth's one line too, and no library prints anything around it (transformers
    warned twice about torchvision on import of every command before)."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    code = "import sys; from amsmooth.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = ["generate", "a cat", "--seed", "1e30", "--out", str(tmp_path / "o")]
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.startswith("amsmooth: error: argument --seed") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()
