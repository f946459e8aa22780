"""Execute the notebooks in ``notebooks/`` top to bottom on a demo output folder and write each, with its
outputs, as a standalone HTML page, for people who only want to read them (the committed notebooks carry no
outputs). The test suite executes them through :func:`execute` too, on a small demo output.

    python pipelines/render_notebooks.py --demo demo-output --out notebooks-html

Needs the notebooks extra (``pip install -e .[notebooks]``): nbclient runs them, nbconvert writes HTML.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DEMO_VARIABLE = "MEDSSL_DEMO_OUTPUT"  # every notebook's first code cell reads its demo folder from here


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks in reading order (their names start with a number)."""
    return sorted(folder.glob("[0-9]*.ipynb"))


def execute(path: Path, demo: Path, timeout: int = 600):
    """Run every cell of the notebook at ``path`` in a fresh kernel whose working folder is the notebook's
    and whose ``MEDSSL_DEMO_OUTPUT`` is ``demo``; return the notebook with its outputs. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` naming the cell and the traceback."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    previous = os.environ.get(DEMO_VARIABLE)
    os.environ[DEMO_VARIABLE] = str(Path(demo).resolve())  # the kernel inherits the environment
    try:
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(DEMO_VARIABLE, None)
        else:
            os.environ[DEMO_VARIABLE] = previous
    return notebook


def render_html(notebook) -> str:
    """An executed notebook as one self-contained HTML page (pictures inlined)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    return body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-output"), help="the demo's output folder")
    parser.add_argument("--out", type=Path, default=Path("notebooks-html"))
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    args = parser.parse_args(argv)
    if not args.demo.is_dir():
        parser.error(f"{args.demo}: no demo output there; run `bash pipelines/demo.sh` first")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks or notebook_paths():
        started = time.perf_counter()
        page = args.out / f"{path.stem}.html"
        page.write_text(render_html(execute(path, args.demo)), encoding="utf-8")
        print(f"{page}  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
