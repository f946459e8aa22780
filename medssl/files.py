"""Writing files so that a reader never sees half of one: every file medssl writes outside the Zarr
store (results, records, CSVs, pictures, NIfTI predictions, encoder files) goes through
:func:`atomic_path`. A killed run leaves either the old file or the new one under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to (same folder, so the final rename is atomic;
    same suffixes, for writers that choose the format by them). Renamed over ``path`` when the block
    ends; removed when it raises, an interrupt included. Folders are made as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; the file gets the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` at ``path``, written whole or not at all."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
