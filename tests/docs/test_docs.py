"""The documentation is checked like code: the site builds with ``mkdocs build --strict`` (in tests/run.sh), the
code blocks meant to run do run, on the demo's outputs, and the API reference covers every module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.snippets import DOCS, Snippet, pages, snippets

ROOT = DOCS.parent
RUNNABLE = {page: [s for s in snippets(page) if s.marker == "run"] for page in pages()}
RUNNABLE = {page: found for page, found in RUNNABLE.items() if found}


def run_snippet(snippet: Snippet, namespace: dict, cwd: Path) -> None:
    """A Python block in the page's namespace; a bash block in a shell whose ``medssl`` is this environment's."""
    if snippet.language in ("python", "py"):
        exec(compile(snippet.code, snippet.where, "exec"), namespace)
    elif snippet.language in ("bash", "sh", "shell"):
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", snippet.code], cwd=cwd, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (
            f"{snippet.where} failed:\n{snippet.code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    else:
        raise AssertionError(f"{snippet.where}: cannot run a {snippet.language or 'plain'} block")


def test_pages_have_runnable_snippets():
    assert RUNNABLE, "no page marks a block <!-- test: run -->"
    assert any(page.parent.name == "guide" for page in RUNNABLE)


@pytest.mark.parametrize("page", list(RUNNABLE), ids=[str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_marked_snippets_run_on_the_demo_output(page: Path, tiny_demo: Path, tmp_path: Path, monkeypatch):
    """Blocks run from a folder holding ``demo-output/`` (what ``bash pipelines/demo.sh`` writes), as a user who
    has run the demo types them at the repository root; anything they write lands beside it, never inside."""
    (tmp_path / "demo-output").symlink_to(tiny_demo, target_is_directory=True)
    for name in ("configs",):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for snippet in RUNNABLE[page]:
        run_snippet(snippet, namespace, tmp_path)


def test_every_python_block_says_whether_it_runs():
    """An unmarked Python block could silently drift from the code; each one is run or says why not."""
    unmarked = [s.where for page in pages() for s in snippets(page) if s.language in ("python", "py") and not s.marker]
    assert not unmarked, f"mark these <!-- test: run --> or <!-- test: skip (reason) -->: {unmarked}"


def test_the_snippet_reader_sees_markers_and_indented_fences(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- test: run -->\n```python\nx = 1\n```\n- item\n\n  <!-- test: skip (a user's path) -->\n"
        "  ```bash\n  medssl tile /data\n  ```\n```\nplain\n```\n"
    )
    found = snippets(page)
    assert [(s.language, s.marker, s.code) for s in found] == [
        ("python", "run", "x = 1\n"),
        ("bash", "skip", "medssl tile /data\n"),
        ("", "", "plain\n"),
    ]
    assert [s.line for s in found] == [3, 9, 12]


def test_the_api_reference_names_every_module():
    """A new module appears in the API reference; a moved one fails the strict build."""
    listed = set(
        re.findall(
            r"^::: (medssl[\w.]*)", "\n".join(p.read_text() for p in (DOCS / "reference" / "api").glob("*.md")), re.M
        )
    )
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "medssl").rglob("*.py")
        if path.parent != ROOT / "medssl" or path.name not in ("__init__.py", "cli.py")
    }
    assert modules - listed == set(), f"add to docs/reference/api/: {sorted(modules - listed)}"


def test_the_readmes_links_reach_files_that_exist():
    """The README is the site's front door on GitHub: each relative link names a file in the repository."""
    readme = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", readme) if not t.startswith(("http", "#"))]
    assert targets, "the README links into the documentation"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
