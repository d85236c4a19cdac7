"""An attack campaign's output file (amsmooth.attacks.campaign): a file it did not write is refused, unchanged."""
from __future__ import annotations

import pytest

from _cli_errors import one_line_error
from amsmooth.cli.main import main
from amsmooth.errors import AmsmoothError


@pytest.mark.parametrize("content", [b"my notes, no newline", b"a,b\n1,2\n3,4", b"case_number,prompt\n1,x\n2"])
def test_attack_out_that_is_not_ours_is_refused_unchanged(tmp_path, content):
    from amsmooth.attacks.campaign import finished_cases

    out = tmp_path / "existing.csv"
    out.write_bytes(content)
    with pytest.raises(AmsmoothError, match="not written by `amsmooth attack`"):
        finished_cases(out, {})
    assert out.read_bytes() == content


def test_attack_cli_refuses_a_foreign_out_file_unchanged(tmp_path, capsys):
    prompts, out = tmp_path / "p.txt", tmp_path / "existing.csv"
    prompts.write_text("a cat\n")
    out.write_bytes(b"one line")
    assert main(["attack", "concept-pgd", "--encoder", "tiny", "--prompts", str(prompts), "--iterations", "1",
                 "--no-progress", "--out", str(out)]) == 2
    assert "not written by" in one_line_error(capsys) and out.read_bytes() == b"one line"
