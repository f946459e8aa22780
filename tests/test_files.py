"""Atomic writes: the final name only ever holds a complete file, with the mode any file would get."""

from __future__ import annotations

import os
import stat

import pytest

from medssl.files import atomic_path, write_text_atomic


def test_atomic_writes_leave_a_complete_file_with_the_usual_mode(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "results.json", "{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.read_text() == "{}" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "{}" and sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
