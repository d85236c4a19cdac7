"""Attack a prompt set into a CSV in the field's data contract, one flushed row per prompt (resumable).

Columns: ``case_number, prompt, evaluation_seed, evaluation_guidance`` (what ``amsmooth eval`` reads), then
``source_prompt, attack, adaptive, loss, exact, settings`` (``settings``: the resolved attack settings as JSON,
the same on every row, with ``departs_from_reference``: each setting that differs from the attack's reference,
empty for a reference run). Rerunning the same command skips finished case numbers; a file written with other
settings is refused. Each prompt's generator is seeded from (seed, case_number), so a resumed run writes the
same rows as an uninterrupted one.

Several runs on one ``--out`` share the work as ``amsmooth eval`` runs share a RUN_DIR: a case is claimed
(``eval.store.CaseClaims``, kept in ``.{name}.claims`` beside the CSV) before it is attacked and left to a live
process that holds it; a dead process's claim is taken over. Reading the finished rows, cutting a killed run's
partial line and appending a row happen under the claims database's write lock, so the header is written once
and rows never interleave.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import AmsmoothError
from ..eval.store import CaseClaims, config_diff
from ..io import check_output_file, write_failed
from ..prompts import PromptCase
from .base import AttackResult, TextAttack
from .stats import bootstrap_mean

FORMAT = "amsmooth-attack-v1"
COLUMNS = ["case_number", "prompt", "evaluation_seed", "evaluation_guidance", "source_prompt", "attack",
           "adaptive", "loss", "exact", "settings"]


def case_seed(seed: int, case_number: str) -> int:
    """A 63-bit seed for one case, from the run's seed and the case number."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{case_number}".encode()).digest()[:8], "big") >> 1


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def attack_settings(attack: TextAttack, seed: int) -> dict[str, Any]:
    """Everything that determines the rows: attack, its config, seed, encoder, concept(s), defense if adaptive
    (and, for the U-Net attacks, the models and target images)."""
    smoothing = attack.smoothing
    settings = {
        **attack.settings(),
        "format": FORMAT, "attack": attack.name, "adaptive": attack.adaptive, "seed": seed,
        "config": attack.config.to_dict(), "departs_from_reference": attack.departures(),
        "encoder": attack.encoder.fingerprint(),
        "concept": {"name": attack.concept.name, "direction_sha256": _tensor_sha(attack.concept.direction)},
        "smoothing": None if smoothing is None else {
            **smoothing.config.to_dict(),
            "concept_sha256": [_tensor_sha(c.direction) for c in smoothing.concepts]},
    }
    return json.loads(json.dumps(settings))      # as stored: tuples become lists


def _drop_partial_line(path: Path) -> None:
    """A run killed mid-write leaves a line without its newline: cut it so the CSV stays well-formed."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)     # in place: the finished rows are never rewritten


def is_attack_file(path: Path) -> bool:
    """Whether ``path`` starts with our header (an empty file counts: a run killed before its first row)."""
    with path.open("rb") as f:
        first = f.readline()
    if not first:
        return True
    header = next(csv.reader([first.decode("utf-8-sig", errors="replace").rstrip("\r\n")]), [])
    return header == COLUMNS


def _check_ours(path: Path) -> None:
    """Refuse, before touching it, a file whose header is not ours (it was not written by ``amsmooth attack``)."""
    check_output_file(path, ours=is_attack_file, written_by="amsmooth attack")


def finished_cases(path: Path, settings: dict[str, Any]) -> dict[str, str]:
    """case_number → source prompt of the rows already in ``path``; refuses a file with other settings.

    A file that is not ours is refused before anything in it is changed."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    _check_ours(path)
    _drop_partial_line(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    mine = _compared(settings)
    for row in rows:
        theirs = _compared(json.loads(row["settings"] or "{}"))
        if theirs != mine:
            differ = config_diff(theirs, mine)
            raise AmsmoothError(f"{path} was made with other settings (differing: {', '.join(differ)}); "
                                "rerun with the same options to resume, or choose another --out")
    return {row["case_number"]: row["source_prompt"] for row in rows}


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide whether a file can be resumed: ``departs_from_reference`` is derived from the
    config (compared anyway) and absent from files written before it existed."""
    return {k: v for k, v in settings.items() if k != "departs_from_reference"}


def describe_departures(departures: dict[str, dict[str, Any]]) -> str:
    """``[NOT the reference settings: iterations 40 (reference 3000), …]``, or "" for a reference run."""
    if not departures:
        return ""
    parts = ", ".join(f"{k} {d['value']} (reference {d['reference']})" for k, d in departures.items())
    return f" [NOT the reference settings: {parts}]"


def result_row(case: PromptCase, attack: TextAttack, result: AttackResult, settings_json: str) -> list:
    return [case.case_number, result.prompt, "" if case.seed is None else case.seed,
            "" if case.guidance is None else case.guidance, case.prompt, attack.name, attack.adaptive,
            f"{result.loss:.6g}", result.exact, settings_json]


def append_row(path: Path, row: Sequence, header: bool) -> None:
    """Append one CSV row (and the header first if asked), flushed to disk."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerow(row)
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:                 # disk full: cut what was written, the finished rows stay resumable
        if path.exists():
            os.truncate(path, size)
        raise write_failed(path, e) from None


def _remaining(cases: Sequence[PromptCase], done: dict[str, str], out: Path) -> list[PromptCase]:
    """The cases not in ``done``; a finished case attacked from another source prompt is an error."""
    for case in cases:
        if case.case_number in done and done[case.case_number] != case.prompt:
            raise AmsmoothError(f"{out}: case {case.case_number} was attacked from another prompt; "
                                "choose another --out")
    return [c for c in cases if c.case_number not in done]


class AttackCounts(NamedTuple):
    """Cases found finished, attacked by this process, and left to another live process on the same file."""

    before: int
    now: int
    busy: int


def attack_cases(attack: TextAttack, cases: Sequence[PromptCase], out: str | Path, seed: int = 0,
                 progress: bool = True) -> AttackCounts:
    """Attack every case not yet in ``out`` and not claimed by another live process."""
    from tqdm.auto import tqdm

    if not cases:
        raise AmsmoothError("no prompts to attack (the prompt set is empty)")
    out = Path(out)
    check_output_file(out, ours=is_attack_file, written_by="amsmooth attack")   # folder made, writable
    settings = attack_settings(attack, seed)
    claims = CaseClaims.beside(out)
    with claims.locked():
        todo = _remaining(cases, finished_cases(out, settings), out)
    settings_json = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    outer = tqdm(total=len(cases), initial=len(cases) - len(todo), desc=f"{attack.name}", unit="prompt",
                 disable=not progress)
    now = busy = meanwhile = 0
    try:
        for case in todo:
            if not claims.claim("attack", case.case_number):
                busy += 1
                continue
            try:
                with claims.locked():      # finished by another process since we read the file?
                    if case.case_number in finished_cases(out, settings):
                        meanwhile += 1
                        continue
                result = _attack_one(attack, case, seed, progress)
                with claims.locked():
                    append_row(out, result_row(case, attack, result, settings_json),
                               header=not out.is_file() or out.stat().st_size == 0)
            finally:
                claims.release("attack", case.case_number)
            now += 1
            outer.update(1)
            outer.set_postfix(loss=f"{result.loss:.4g}")
    finally:
        outer.close()
        claims.close()
    return AttackCounts(len(cases) - len(todo) + meanwhile, now, busy)


def _attack_one(attack: TextAttack, case: PromptCase, seed: int, progress: bool) -> AttackResult:
    """One case, from its own generator (seeded from the run seed and the case number), with its step bar."""
    from tqdm.auto import tqdm

    total = attack.total_steps() if hasattr(attack, "total_steps") else attack.config.iterations
    inner = tqdm(total=total, desc=f"case {case.case_number}", leave=False, disable=not progress)

    def tick(step: int, best: float) -> None:
        inner.update(step - inner.n)
        inner.set_postfix(loss=f"{best:.4g}")

    try:
        return attack.run_case(case, torch.Generator().manual_seed(case_seed(seed, case.case_number)), tick)
    finally:
        inner.close()


def summarize(path: str | Path, seed: int = 0) -> str:
    """One line about an attack CSV: rows, exact re-tokenizations, mean loss with its bootstrap 95 % CI over
    prompts (the loss is each attack's own objective: compare rows of one attack and setting only)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return f"{path}: no rows"
    losses = [float(r["loss"]) for r in rows]
    exact = sum(r["exact"] == "True" for r in rows)
    ci = bootstrap_mean(losses, seed=seed)
    spread = f", 95 % CI [{ci.low:.4g}, {ci.high:.4g}] (bootstrap over prompts)" if len(rows) > 1 else ""
    return (f"{len(rows)} prompt(s), {exact} re-tokenize exactly; loss mean {ci.mean:.4g}{spread}")
