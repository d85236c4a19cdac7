"""Prompt files in the field's data contract.

One row per case: ``prompt`` (required), ``case_number`` (else the row index), ``evaluation_seed`` (else the
default seed) and optionally ``evaluation_guidance``. Plain text files are one prompt per line.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .errors import AmsmoothError


@dataclass(frozen=True)
class PromptCase:
    """One row of a prompt set."""

    case_number: str
    prompt: str
    seed: int | None = None
    guidance: float | None = None


def _cell_int(value: str | None, path: Path, row: int, column: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        raise AmsmoothError(f"{path}: row {row}: column '{column}' is not a number: {value!r}") from None


def _cell_float(value: str | None, path: Path, row: int, column: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise AmsmoothError(f"{path}: row {row}: column '{column}' is not a number: {value!r}") from None


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise AmsmoothError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AmsmoothError(f"cannot read prompt file {path}: {e}") from None


def read_prompt_csv(path: str | Path, *, unique_cases: bool = True) -> list[PromptCase]:
    """Read a CSV in the data contract; errors name the file and what is missing."""
    path = Path(path)
    columns, rows = _read_rows(path)
    if not columns:
        raise AmsmoothError(f"{path}: the file is empty; a prompt CSV needs a header row "
                            "prompt[,case_number,evaluation_seed,evaluation_guidance] and one row per case")
    if "prompt" not in columns:
        raise AmsmoothError(f"{path}: no 'prompt' column (found: {', '.join(columns) or 'none'}); "
                            "a prompt CSV needs prompt[,case_number,evaluation_seed,evaluation_guidance]")
    if not rows:
        raise AmsmoothError(f"{path}: the CSV has a header but no rows")
    cases = []
    for i, row in enumerate(rows):
        case = (row.get("case_number") or "").strip() or str(i)
        if case.endswith(".0") and case[:-2].isdigit():
            case = case[:-2]
        cases.append(PromptCase(case, row["prompt"] or "",
                                _cell_int(row.get("evaluation_seed"), path, i + 2, "evaluation_seed"),
                                _cell_float(row.get("evaluation_guidance"), path, i + 2, "evaluation_guidance")))
    if unique_cases:
        seen: set[str] = set()
        for c in cases:
            if c.case_number in seen:
                raise AmsmoothError(f"{path}: duplicate case_number {c.case_number!r}; case numbers must be unique")
            seen.add(c.case_number)
    return cases


def read_prompts_file(path: str | Path) -> list[PromptCase]:
    """A ``.csv`` in the data contract, or a text file with one prompt per line (blank lines skipped)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_prompt_csv(path)
    try:
        lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise AmsmoothError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read prompt file {path}: {e}") from None
    prompts = [ln for ln in lines if ln.strip()]
    if not prompts:
        raise AmsmoothError(f"{path}: no prompts (the file is empty)")
    return [PromptCase(str(i), p) for i, p in enumerate(prompts)]
