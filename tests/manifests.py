"""Reading the manifest a preprocessing run writes (``medssl tile``, ``medssl cache-volumes``)."""

from __future__ import annotations

import csv
from pathlib import Path


def manifest_rows(summary_or_manifest) -> dict[str, dict]:
    """The manifest rows by id, of a run summary (its ``manifest``) or a manifest path."""
    path = Path(getattr(summary_or_manifest, "manifest", summary_or_manifest))
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}
