"""Prompt files in the field's data contract.

One row per case: ``prompt`` (required), ``case_number`` (else the row index), ``evaluation_seed`` (else the
default seed) and optionally ``evaluation_guidance``. Plain text files are one prompt per line.

CSVs are parsed strictly (:func:`read_csv`): a quote that is not closed, text after a closing quote, or a quoted
field that swallows what look like whole rows (a stray ``"``) is an error naming the line, never silently merged
rows. Only ``\n`` and ``\r\n`` end a line: Unicode separators (U+2028, U+0085 …) stay inside their prompt.
An empty prompt given on the command line is refused; in a CSV it is kept with a warning naming its cases (the
published I2P set has one, case 2260, and its numbers include it).
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AmsmoothError
from .io import name_problem
from .limits import GUIDANCE

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


def text_lines(text: str) -> list[str]:
    """The lines of ``text``, split at ``\n`` (and ``\r\n``) only: ``str.splitlines`` would also split at
    U+2028, U+0085, form feeds …, making one prompt several."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def _looks_like_a_row(line: str, columns: list[str]) -> bool:
    """Whether a line inside a multi-line quoted field parses as a whole row of ``columns`` (≥ 2 columns; a
    case_number cell without spaces, seed/guidance cells that are numbers or empty)."""
    if len(columns) < 2:
        return False
    try:
        cells = next(csv.reader([line], strict=True), [])
    except csv.Error:
        return False
    if len(cells) != len(columns):
        return False
    for name, cell in zip(columns, cells, strict=True):
        value = cell.strip()
        if name == "case_number" and (not value or " " in value):
            return False
        if name in ("evaluation_seed", "evaluation_guidance") and value:
            try:
                float(value)
            except ValueError:
                return False
    return True


def read_csv(text: str, where: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row)]) of CSV ``text``, parsed strictly; every malformed row is one error naming
    its line. A quoted field may hold line breaks (I2P and COCO prompts do), unless its inner lines look like
    whole rows: then a stray quote merged rows, and the error says so."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
    except csv.Error as e:
        raise AmsmoothError(f"{where}: line 1: malformed CSV ({e})") from None
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise AmsmoothError(f"{where}: line 1: the header names column {twice[0]!r} more than once; which one is "
                            "meant cannot be told")
    rows: list[tuple[int, dict[str, str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise AmsmoothError(f"{where}: line {start}: malformed CSV ({e}); check the quotes on that line (a "
                                "quote inside a field is written \"\")") from None
        if not cells:
            continue                                   # a blank line
        if reader.line_num > start:
            inner = [ln for c in cells for ln in text_lines(c)[1:]]
            if any(_looks_like_a_row(ln, header) for ln in inner):
                raise AmsmoothError(f"{where}: line {start}: a quoted field runs on to line {reader.line_num} and "
                                    "swallows what look like whole rows (a stray '\"'?); fix the quote on line "
                                    f"{start} (a quote inside a field is written \"\")")
        if len(cells) > len(header):
            raise AmsmoothError(f"{where}: line {start}: {len(cells)} fields but the header has {len(header)}; "
                                "quote a field that contains a comma")
        rows.append((start, {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header)}))
    return header, rows


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped: Excel writes one); one clear error if it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise AmsmoothError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise AmsmoothError(f"{what} {path} is a folder; give a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read {what} {path}: {e}") from None


def _cell_guidance(value: str | None, path: Path, row: int) -> float | None:
    guidance = _cell_float(value, path, row, "evaluation_guidance")
    GUIDANCE.check(guidance, f"{path}: row {row}: column 'evaluation_guidance'")
    return guidance


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    return read_csv(read_text(path, "prompt file"), str(path))


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
    for i, (line, row) in enumerate(rows):
        case = (row.get("case_number") or "").strip() or str(i)
        if case.endswith(".0") and case[:-2].isdigit():
            case = case[:-2]
        cases.append(PromptCase(case, row["prompt"] or "",
                                _cell_seed(row.get("evaluation_seed"), path, line, "evaluation_seed"),
                                _cell_guidance(row.get("evaluation_guidance"), path, line)))
    for (line, _), c in zip(rows, cases, strict=True):
        check_case_number(c.case_number, f"{path}: row {line}")
    empty = [c.case_number for c in cases if not c.prompt.strip()]
    if empty:
        shown = ", ".join(empty[:5]) + (", …" if len(empty) > 5 else "")
        warnings.warn(f"{path}: {len(empty)} case(s) with an empty prompt (case {shown}): each is generated from "
                      "the empty prompt, as the prompt set defines it", stacklevel=2)
    if unique_cases:
        check_unique(cases, str(path))
    return cases


def check_prompt(prompt: str, where: str) -> None:
    """Refuse an empty (or blank) prompt typed on the command line: it would silently be the unconditional
    image."""
    if not prompt.strip():
        raise AmsmoothError(f"{where} is empty; give a prompt (an empty prompt belongs in a CSV, where it is "
                            "reported)")


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
    """A ``.csv`` in the data contract, or a text file with one prompt per line (lines end at ``\n`` or
    ``\r\n`` only; blank lines separate nothing and are skipped)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_prompt_csv(path)
    prompts = [ln for ln in text_lines(read_text(path, "prompt file")) if ln.strip()]
    if not prompts:
        raise AmsmoothError(f"{path}: no prompts (the file is empty)")
    return [PromptCase(str(i), p) for i, p in enumerate(prompts)]


@dataclass(frozen=True)
class GenerationSettings:
    """How every case is generated; the case's own seed and guidance win over the defaults."""

    images_per_prompt: int = 1
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None

    def seed_of(self, case: PromptCase) -> int:
        return self.seed if case.seed is None else case.seed

    def guidance_of(self, case: PromptCase) -> float:
        return self.guidance if case.guidance is None else case.guidance

    def kwargs(self, case: PromptCase) -> dict[str, Any]:
        """Pipeline arguments of one case."""
        return {"num_inference_steps": self.steps, "height": self.height, "width": self.width,
                "negative_prompt": self.negative_prompt, "guidance_scale": self.guidance_of(case)}
