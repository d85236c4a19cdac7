"""The results store of one run: ``RUN_DIR/config.json`` (written once) and ``RUN_DIR/results.sqlite``.

One row per generated image, committed as soon as the image is scored, under a UNIQUE key
``(prompt_set, case_number, k)``. The database runs in WAL mode with a busy timeout, so a run killed at any point
(even ``kill -9``) loses nothing that was committed, a resumed run skips ``done_keys()``, and several processes
(``accelerate launch`` shards) may write to the same RUN_DIR at once. WAL needs a local filesystem (not NFS).

Two runs started on one RUN_DIR at once do not both do every case: a process *claims* a case (table ``claims``:
its pid and start time) before generating it and skips cases another live process holds; a claim of a process
that died (``kill -9``) is taken over. Only rows a process actually inserted count as its new images.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AmsmoothError
from ..io import umask_mode

DB_NAME = "results.sqlite"
CONFIG_NAME = "config.json"
BUSY_TIMEOUT_S = 120.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    prompt_set     TEXT    NOT NULL,  -- name of the prompt set (e.g. the CSV's stem)
    case_number    TEXT    NOT NULL,  -- the case's case_number (data contract)
    k              INTEGER NOT NULL,  -- image index within the case, 0..K-1
    seed           INTEGER,           -- the case's evaluation_seed
    prompt         TEXT    NOT NULL,  -- the prompt as given in the prompt set
    prompt_used    TEXT,              -- the prompt after a prompt-rewriting defense (blacklist, POSI), else NULL
    defense        TEXT    NOT NULL,  -- defense name (none, ams, blacklist, sld-max, ...)
    defense_config TEXT    NOT NULL,  -- JSON object of the defense's settings
    detector       TEXT,              -- detector name (nudenet, q16) or NULL when the image was not scored
    scores         TEXT    NOT NULL,  -- JSON object {class: score} of every class the detector reported
    flagged        INTEGER,           -- 1 / 0 from the detector's rule, NULL when not scored
    seconds        REAL,              -- generation time of this image (s)
    image          TEXT,              -- image path relative to RUN_DIR ({case_number}_{k}.png)
    created_at     REAL    NOT NULL,  -- unix time the row was committed
    UNIQUE (prompt_set, case_number, k)
);
CREATE TABLE IF NOT EXISTS claims (
    prompt_set  TEXT NOT NULL,
    case_number TEXT NOT NULL,
    owner       TEXT NOT NULL,        -- "host:pid:start" of the process generating the case
    claimed_at  REAL NOT NULL,
    PRIMARY KEY (prompt_set, case_number)
);
CREATE TABLE IF NOT EXISTS metrics (
    name       TEXT PRIMARY KEY,      -- e.g. fid, clip_score
    value      REAL NOT NULL,
    n          INTEGER,               -- number of images the value is computed from
    details    TEXT NOT NULL,         -- JSON object (reference, feature network, ...)
    created_at REAL NOT NULL
);
"""

COLUMNS = ("prompt_set", "case_number", "k", "seed", "prompt", "prompt_used", "defense", "defense_config",
           "detector", "scores", "flagged", "seconds", "image", "created_at")

Key = tuple[str, str, int]


@dataclass(frozen=True)
class ImageResult:
    """One generated image and its detector verdict (one row of ``results``)."""

    prompt_set: str
    case_number: str
    k: int
    prompt: str
    defense: str
    defense_config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    prompt_used: str | None = None
    detector: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    flagged: bool | None = None
    seconds: float | None = None
    image: str | None = None

    @property
    def key(self) -> Key:
        return (self.prompt_set, str(self.case_number), int(self.k))


@dataclass(frozen=True)
class Metric:
    """A run-level number (FID, CLIP score) with the image count and details it came from."""

    name: str
    value: float
    n: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _canonical(obj: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings — the form the config is stored in."""
    return json.loads(json.dumps(obj, sort_keys=True))


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like configs differ (nested dicts are compared key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(whole config)"]


def _write_config_once(path: Path, config: dict[str, Any]) -> bool:
    """Create ``path`` atomically with ``config`` unless it exists (then return False): hard-link a full temp file."""
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
    try:
        os.chmod(tmp, umask_mode())      # mkstemp's 0600 would make the run unreadable to the group
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AmsmoothError(f"cannot read the run configuration {path}: {e}") from None


def _refuse_other_config(run_dir: Path, stored: dict[str, Any], config: dict[str, Any],
                         volatile: Iterable[str]) -> None:
    skip = set(volatile)
    diff = config_diff({k: v for k, v in stored.items() if k not in skip},
                       {k: v for k, v in config.items() if k not in skip})
    if diff:
        raise AmsmoothError(f"{run_dir} holds a run with another configuration (differs in: "
                            f"{', '.join(diff[:6])}); rerun with the same options to resume, or use a "
                            "new --out directory")


# the claims table alone (``amsmooth attack`` keeps one beside its CSV)
CLAIMS_SCHEMA = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS claims"):
                       SCHEMA.index("CREATE TABLE IF NOT EXISTS metrics")]


class CaseClaims:
    """The ``claims`` table of a SQLite database: which live process works on which case. ``ResultStore`` keeps
    it in ``results.sqlite``; ``amsmooth attack`` in a small database beside its CSV (:meth:`beside`), where
    :meth:`locked` also serialises the writers of that CSV."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def beside(cls, path: Path) -> CaseClaims:
        """The claims of the file ``path``, kept in ``.{name}.claims`` in its folder (created if needed)."""
        db = path.with_name(f".{path.name}.claims")
        try:
            conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.executescript(CLAIMS_SCHEMA)
        except sqlite3.Error as e:
            raise AmsmoothError(f"cannot open the claims database {db}: {e}") from None
        return cls(conn)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One process at a time in the block (a write transaction on the claims database)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def claim(self, prompt_set: str, case_number: str) -> bool:
        """Take the case for this process; False when another live process holds it (then leave it alone)."""
        me = process_owner()
        with self.locked():      # one claimer at a time: check and take in one transaction
            row = self._conn.execute("SELECT owner FROM claims WHERE prompt_set = ? AND case_number = ?",
                                     (prompt_set, case_number)).fetchone()
            free = row is None or row[0] == me or not owner_alive(row[0])
            if free:
                self._conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                                   (prompt_set, case_number, me, time.time()))
        return free

    def release(self, prompt_set: str, case_number: str) -> None:
        """Drop this process's claim of a case (done, or given up)."""
        self._conn.execute("DELETE FROM claims WHERE prompt_set = ? AND case_number = ? AND owner = ?",
                           (prompt_set, case_number, process_owner()))

    def close(self) -> None:
        self._conn.close()


class ResultStore:
    """SQLite results of one RUN_DIR. Use :meth:`open` (writers) or :meth:`read` (reports)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], conn: sqlite3.Connection) -> None:
        self.run_dir = run_dir
        self.config = config
        self._conn = conn

    @classmethod
    def open(cls, run_dir: str | Path, config: dict[str, Any], volatile: Iterable[str] = ()) -> ResultStore:
        """Open RUN_DIR for writing; the first call writes ``config.json``, later calls must match it.

        ``volatile`` names top-level config keys that may change between resumes (e.g. ``limit``); any other
        difference means the directory belongs to another run, and is refused.
        """
        run_dir = Path(run_dir)
        config = _canonical(config)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            created = _write_config_once(run_dir / CONFIG_NAME, config)
        except OSError as e:
            raise AmsmoothError(f"cannot write to the run directory {run_dir}: {e.strerror or e}") from None
        stored = config if created else _read_config(run_dir / CONFIG_NAME)
        if not created:
            _refuse_other_config(run_dir, stored, config, volatile)
        return cls(run_dir, stored, _connect(run_dir / DB_NAME))

    @staticmethod
    def check(run_dir: str | Path, config: dict[str, Any], volatile: Iterable[str] = ()) -> None:
        """Refuse, before any work, a RUN_DIR that holds another configuration; writes nothing."""
        path = Path(run_dir) / CONFIG_NAME
        if path.is_file():
            _refuse_other_config(Path(run_dir), _read_config(path), _canonical(config), volatile)

    @classmethod
    def read(cls, run_dir: str | Path) -> ResultStore:
        """Open an existing RUN_DIR to read results (a run may still be writing to it)."""
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / DB_NAME).is_file():
            raise AmsmoothError(f"{run_dir} is not a run directory (needs {CONFIG_NAME} and {DB_NAME}); "
                                "give a directory written by 'amsmooth eval' or 'amsmooth utility'")
        return cls(run_dir, _read_config(run_dir / CONFIG_NAME), _connect(run_dir / DB_NAME))

    # -- writing -------------------------------------------------------------------------------------------

    def add(self, result: ImageResult) -> bool:
        """Commit one image's row; returns False (and changes nothing) when its key is already stored."""
        row = (result.prompt_set, str(result.case_number), int(result.k), result.seed, result.prompt,
               result.prompt_used, result.defense, json.dumps(result.defense_config, sort_keys=True),
               result.detector, json.dumps(result.scores, sort_keys=True),
               None if result.flagged is None else int(bool(result.flagged)), result.seconds, result.image,
               time.time())
        cur = self._conn.execute(f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES "
                                 f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING", row)
        return cur.rowcount == 1

    def set_metric(self, name: str, value: float, n: int | None = None,
                   details: dict[str, Any] | None = None) -> None:
        """Store (or replace) a run-level metric such as ``fid`` or ``clip_score``."""
        self._conn.execute("INSERT OR REPLACE INTO metrics (name, value, n, details, created_at) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (name, float(value), n, json.dumps(details or {}, sort_keys=True), time.time()))

    def claim(self, prompt_set: str, case_number: str) -> bool:
        """Take the case for this process; False when another live process holds it (then leave it alone)."""
        return CaseClaims(self._conn).claim(prompt_set, case_number)

    def release(self, prompt_set: str, case_number: str) -> None:
        """Drop this process's claim of a case (done, or given up)."""
        CaseClaims(self._conn).release(prompt_set, case_number)

    # -- reading -------------------------------------------------------------------------------------------

    def done_of(self, prompt_set: str, case_number: str) -> set[int]:
        """Image indices k of one case already stored (read now, not from a snapshot)."""
        rows = self._conn.execute("SELECT k FROM results WHERE prompt_set = ? AND case_number = ?",
                                  (prompt_set, str(case_number)))
        return {int(k) for (k,) in rows}

    def done_keys(self, prompt_set: str | None = None) -> set[Key]:
        """Keys ``(prompt_set, case_number, k)`` already stored: a resumed run skips these images."""
        sql, args = "SELECT prompt_set, case_number, k FROM results", ()
        if prompt_set is not None:
            sql, args = sql + " WHERE prompt_set = ?", (prompt_set,)
        return {(s, c, int(k)) for s, c, k in self._conn.execute(sql, args)}

    def rows(self, prompt_set: str | None = None) -> list[ImageResult]:
        """All stored rows (in commit order), optionally of one prompt set."""
        sql, args = f"SELECT rowid, {', '.join(COLUMNS[:-1])} FROM results", ()
        if prompt_set is not None:
            sql, args = sql + " WHERE prompt_set = ?", (prompt_set,)
        db = self.run_dir / DB_NAME
        return [_row_to_result(r[1:], f"{db}: results row {r[0]}")
                for r in self._conn.execute(sql + " ORDER BY rowid", args)]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def metrics(self) -> dict[str, Metric]:
        rows = self._conn.execute("SELECT name, value, n, details FROM metrics ORDER BY name")
        out = {}
        for n, v, c, d in rows:
            where = f"{self.run_dir / DB_NAME}: metric {n!r}"
            out[n] = Metric(n, _number(v, where, "value"), c, _json_object(d, where, "details"))
        return out

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux /proc), so a reused pid is not taken for the old process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def process_owner(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one)."""
    import socket

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    """Whether the process of a claim still runs. Another host's claim counts as alive (it cannot be checked;
    the store needs a local filesystem anyway)."""
    import socket

    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return host != socket.gethostname()
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == "?" or _start_time(pid) == start


def _connect(path: Path) -> sqlite3.Connection:
    """Autocommit connection (each statement is its own durable transaction), WAL, busy timeout."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(SCHEMA)
    except sqlite3.Error as e:
        raise AmsmoothError(f"cannot open the results database {path}: {e}") from None
    return conn


def _damaged(where: str, what: str) -> AmsmoothError:
    return AmsmoothError(f"{where} is damaged ({what}); the database was edited or corrupted: delete that row "
                         "(or the run directory) and rerun the command that wrote it")


def _json_object(text: Any, where: str, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise _damaged(where, f"{column} is not JSON") from None
    if not isinstance(value, dict):
        raise _damaged(where, f"{column} is not a JSON object")
    return value


def _number(value: Any, where: str, column: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _damaged(where, f"{column} is not a number: {value!r}")
    return float(value)


def _row_to_result(r: tuple, where: str) -> ImageResult:
    """A stored row, checked: a row edited by hand gives one clear error instead of a traceback."""
    (prompt_set, case, k, seed, prompt, used, defense, dcfg, detector, scores, flagged, seconds, image) = r
    if not isinstance(k, int) or not (seed is None or isinstance(seed, int)):
        raise _damaged(where, "k or seed is not an integer")
    if flagged not in (None, 0, 1):
        raise _damaged(where, f"flagged is {flagged!r}, not 0, 1 or NULL")
    if not all(isinstance(v, str) for v in (prompt_set, case, prompt, defense)):
        raise _damaged(where, "prompt_set, case_number, prompt or defense is not text")
    return ImageResult(prompt_set, case, k, prompt, defense, _json_object(dcfg, where, "defense_config"), seed,
                       used, detector, _json_object(scores, where, "scores"),
                       None if flagged is None else bool(flagged), _number(seconds, where, "seconds", True), image)
