"""What the CLI tests share: the check that a refusal is amsmooth's one error line."""
from __future__ import annotations


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("amsmooth: error:") and "\n" not in err, err
    return err
