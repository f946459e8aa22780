"""Atomic writers of evaluation results: a reader (a person, a dashboard, a resumed run) never sees
half a file, because each file is written under a temporary name and renamed over the old one
(``os.replace`` is atomic on one file system). Every task's ``metrics.json`` and per-sample or
per-case CSV goes through these two functions."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medssl.files import atomic_path, write_text_atomic


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, written whole or not at all."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv_atomic(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV with a ``columns`` header and one line per row, written whole or not at all."""

    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return Path(path)
