"""File writing (amsmooth.io): paths kept inside the output folder, atomic and durable writes."""
from __future__ import annotations

import os

import pytest

from amsmooth.errors import AmsmoothError


def test_inside_refuses_paths_out_of_the_folder(tmp_path):
    from amsmooth.io import inside

    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert inside(root, "a/1_0.png") == root / "a" / "1_0.png"
    for bad in ("../x.png", "/etc/x.png", "link/x.png"):
        with pytest.raises(AmsmoothError, match="refusing to write"):
            inside(root, bad)


def test_atomic_write_fsyncs_the_file_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    import amsmooth.io as io

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    io.atomic_write_bytes(tmp_path / "x.png", b"data")
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == 2   # the file, then its folder
    assert (tmp_path / "x.png").read_bytes() == b"data" and os.listdir(tmp_path) == ["x.png"]
