"""Fenced code blocks of the documentation site, and which of them the tests run.

A block is run when the line just above its opening fence is ``<!-- test: run -->``; a Python block that is
not meant to run (a sketch with a user's paths, a multi-GPU launch) says why, ``<!-- test: skip (reason) -->``.
Run blocks of one page share one namespace, in page order, as a notebook's cells do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUN = "<!-- test: run -->"
SKIP = re.compile(r"<!-- test: skip \(.+\) -->")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str  # "run", "skip" or ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """Every fenced block of a Markdown page with its language and the marker above it."""
    lines = page.read_text().splitlines()
    found: list[Snippet] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        above = lines[index - 1].strip() if index else ""
        marker = "run" if above == RUN else "skip" if SKIP.fullmatch(above) else ""
        found.append(Snippet(page, index + 1, language.lower(), "\n".join(body) + "\n", marker))
        index = end + 1
    return found


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))
