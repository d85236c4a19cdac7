"""Atomic file writes: a crash never leaves a half-written image or sidecar behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def atomic_save_image(path: Path, image: Any) -> None:
    """Save a PIL image as PNG atomically."""
    import io as _io

    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed; one clear error if it cannot be written."""
    from .errors import AmsmoothError

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise AmsmoothError(f"cannot write to {path}: {e.strerror or e}") from None
