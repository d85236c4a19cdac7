"""Prompt files (amsmooth.prompts): the CSV cells and case numbers they accept, a UTF-8 BOM."""
from __future__ import annotations

import pytest

from _cli_errors import one_line_error
from amsmooth.cli.main import main

FAST = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64"]


@pytest.mark.parametrize("case", ["../../x", "/abs/path", "a/b", "x" * 300, ".hidden", "a\tb"])
def test_generate_refuses_case_numbers_that_leave_or_cannot_name_a_file(tmp_path, capsys, case):
    csv = tmp_path / "sub" / "p.csv"
    csv.parent.mkdir()
    csv.write_text(f'case_number,prompt\n"{case}",a cat\n')
    out = tmp_path / "sub" / "out"
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(out)]) == 2
    assert "cannot name an image file" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p.csv", "sub"]   # nothing written anywhere


@pytest.mark.parametrize("cell,match", [("1e30", "2^63"), ("inf", "finite"), (str(2**64), "2^63"),
                                        ("4.5", "not an integer"), ("nan", "finite")])
def test_csv_seed_cells_give_one_line_errors(tmp_path, capsys, cell, match):
    csv = tmp_path / "p.csv"
    csv.write_text(f"case_number,prompt,evaluation_seed\n1,a cat,{cell}\n")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert match in err and "row 2" in err


def test_csv_guidance_nan_is_refused(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("case_number,prompt,evaluation_guidance\n1,a cat,nan\n")
    assert main(["generate", "--prompts-file", str(csv), *FAST, "--out", str(tmp_path / "o")]) == 2
    assert "finite" in one_line_error(capsys)


def test_csv_with_a_utf8_bom_is_read(tmp_path):
    from amsmooth.prompts import read_prompts_file

    csv = tmp_path / "p.csv"
    csv.write_bytes("\ufeffprompt,case_number,evaluation_seed\na cat,7,3\n".encode("utf-8"))
    (case,) = read_prompts_file(csv)
    assert (case.case_number, case.prompt, case.seed) == ("7", "a cat", 3)
