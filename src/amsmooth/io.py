"""File writes that stay inside their folder and survive crashes.

``inside`` is the one containment check every writer uses: a name taken from user data (a CSV's case_number)
never reaches a path outside the output folder. ``atomic_write_bytes`` writes a temp file, fsyncs it, renames it
into place and fsyncs the folder, so once it returns the file is durable: a row committed after it (SQLite,
``synchronous=FULL``) never points to an empty or missing image after a power loss.
"""
from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import AmsmoothError

MAX_NAME_BYTES = 200   # a file-name stem from user data; leaves room for "_{k}.png" and the temp-file affix (255)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the stem of a file name in our output folders, or None when it can."""
    if not name:
        return "it is empty"
    if any(c in name for c in "/\\\0") or name.startswith("."):
        return "it contains '/', '\\' or NUL, or starts with '.'"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return ("it contains a control or format character (a right-to-left override, a zero-width or line "
                "separator, …)")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def inside(root: Path, relative: str | Path) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` (no ``..``, no absolute path, no link out)."""
    rel = Path(relative)
    target = root / rel
    if rel.is_absolute() or ".." in rel.parts:
        raise AmsmoothError(f"refusing to write {relative!s}: the path leaves the output folder {root}")
    real_root, real = os.path.realpath(root), os.path.realpath(target)
    if os.path.commonpath([real_root, real]) != real_root:
        raise AmsmoothError(f"refusing to write {relative!s}: it resolves to {real}, outside {root}")
    return target


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failed(path: Path | str, err: OSError) -> AmsmoothError:
    """One line for an OS failure while writing ``path`` (disk full, read-only filesystem, quota …)."""
    return AmsmoothError(f"cannot write {path}: {err.strerror or err}; nothing partial was left (free some space "
                         "or choose another --out, then rerun)")


def umask_mode() -> int:
    """The mode a plain ``open(…, "w")`` gives a new file (0o644 under umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename into place, fsync of the folder. An OS
    failure (disk full …) removes the temp file and is one ``AmsmoothError``; ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def check_output_file(path: str | os.PathLike, *, ours: Callable[[Path], bool] | None = None,
                      written_by: str = "amsmooth", overwrite: bool = False) -> Path:
    """The one check of an ``--out`` file, before any work: not a folder, its folder exists (or can be made) and
    is writable, and an existing file is replaced only if ``ours(path)`` recognises it as one ``written_by``
    wrote (or with ``overwrite``). ``ours=None``: any existing file is refused. One ``AmsmoothError`` otherwise;
    a refused file is never touched."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise AmsmoothError(f"--out {path} is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AmsmoothError(f"--out {path}: cannot create the folder {parent}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise AmsmoothError(f"--out {path}: folder {parent} is not writable")
    if out.exists() and not overwrite and (ours is None or not out.is_file() or not ours(out)):
        hint = "; choose another --out" + (" or pass --overwrite" if ours is None else "")
        what = "already exists" if ours is None else f"exists and was not written by `{written_by}`"
        raise AmsmoothError(f"{path} {what}{hint}")
    return out


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (``NaN``/``Infinity`` are refused: they are not JSON), written atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(path: Path, image: Any) -> None:
    """Save a PIL image as PNG atomically and durably."""
    import io as _io

    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed; one clear error if it cannot be written."""
    if path.exists() and not path.is_dir():
        raise AmsmoothError(f"--out {path} is a file, not a folder; give a folder for the images")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise AmsmoothError(f"cannot write to {path}: {e.strerror or e}") from None


def cache_dir() -> Path:
    """Where amsmooth caches what it derives (built-in concept directions, relevance scales, the MiniLM folder):
    ``AMSMOOTH_CACHE_DIR``, else the user cache dir."""
    env = os.environ.get("AMSMOOTH_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("amsmooth"))
