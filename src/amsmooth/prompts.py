"""Prompt files in the field's data contract.

One row per case: ``prompt`` (required), ``case_number`` (else the row index), ``evaluation_seed`` (else the
default seed) and optionally ``evaluation_guidance``. Plain text files are one prompt per line.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import AmsmoothError
from .io import name_problem

SEED_LIMIT = 2**63   # seeds are integers in [0, 2^63): what torch generators and SQLite INTEGER both hold


def seed_problem(seed: int) -> str | None:
    """Why ``seed`` cannot seed a generator, or None."""
    if not 0 <= seed < SEED_LIMIT:
        return f"a seed must be an integer from 0 to 2^63-1, got {seed}"
    return None


@dataclass(frozen=True)
class PromptCase:
    """One row of a prompt set."""

    case_number: str
    prompt: str
    seed: int | None = None
    guidance: float | None = None


def _cell_seed(value: str | None, path: Path, row: int, column: str) -> int | None:
    """An integer seed cell ('42' or '42.0'); anything else, or out of range, is one clear error."""
    number = _cell_float(value, path, row, column)
    if number is None:
        return None
    text = value.strip()
    seed = int(text) if text.lstrip("+-").isdigit() else int(number) if number.is_integer() else None
    problem = "not an integer" if seed is None else seed_problem(seed)
    if problem:
        raise AmsmoothError(f"{path}: row {row}: column '{column}': {problem} ({value!r})")
    return seed


def _cell_float(value: str | None, path: Path, row: int, column: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise AmsmoothError(f"{path}: row {row}: column '{column}' is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise AmsmoothError(f"{path}: row {row}: column '{column}' must be a finite number, got {value!r}")
    return number


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:   # a BOM (Excel) is not part of the header
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
                                _cell_seed(row.get("evaluation_seed"), path, i + 2, "evaluation_seed"),
                                _cell_float(row.get("evaluation_guidance"), path, i + 2, "evaluation_guidance")))
    for i, c in enumerate(cases):
        check_case_number(c.case_number, f"{path}: row {i + 2}")
    if unique_cases:
        check_unique(cases, str(path))
    return cases


def check_case_number(case_number: str, where: str) -> None:
    """A case number names files (``{case_number}_{k}.png``): refuse one that cannot, saying why."""
    problem = name_problem(case_number)
    if problem:
        shown = case_number if len(case_number) <= 40 else case_number[:37] + "..."
        raise AmsmoothError(f"{where}: case_number {shown!r} cannot name an image file ({{case_number}}_{{k}}.png): "
                            f"{problem}; use plain numbers or short names")


def check_unique(cases: list[PromptCase], where: str) -> None:
    """Refuse two cases with one case number: their files would overwrite each other."""
    seen: set[str] = set()
    for c in cases:
        if c.case_number in seen:
            raise AmsmoothError(f"{where}: duplicate case_number {c.case_number!r}; case numbers must be unique "
                                "(they name the image files)")
        seen.add(c.case_number)


def read_prompts_file(path: str | Path) -> list[PromptCase]:
    """A ``.csv`` in the data contract, or a text file with one prompt per line (blank lines skipped)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_prompt_csv(path)
    try:
        lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except FileNotFoundError:
        raise AmsmoothError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read prompt file {path}: {e}") from None
    prompts = [ln for ln in lines if ln.strip()]
    if not prompts:
        raise AmsmoothError(f"{path}: no prompts (the file is empty)")
    return [PromptCase(str(i), p) for i, p in enumerate(prompts)]
