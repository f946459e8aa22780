"""The notebooks in ``notebooks/`` are executed, not decorative: the demo runs once at its smallest size (the
same pipeline as ``bash pipelines/demo.sh``, seconds instead of minutes), then every notebook runs top to bottom
on its outputs in a fresh kernel, and any error fails the test. The committed notebooks carry no outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pipelines"))
from render_notebooks import execute, notebook_paths  # noqa: E402  (pipelines/ is a folder of scripts)

from tests.ddp import in_a_forked_process  # noqa: E402

NOTEBOOKS = notebook_paths()


def test_the_first_notebooks_people_open_are_there():
    names = [path.stem for path in NOTEBOOKS]
    for name in ("01_slide_cache", "02_volume_cache", "03_pretraining", "04_slide_level", "05_finetune"):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path: Path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {index} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


def run_tiny_demo(folder: str, out: str, log: str) -> int:
    """``python pipelines/demo.py --out <out> --tiny`` from ``folder``, everything it prints in ``log``."""
    import demo  # pipelines/demo.py

    os.chdir(folder)
    with open(log, "w") as handle:  # file descriptors, so tqdm's and the libraries' output lands there too
        os.dup2(handle.fileno(), sys.stdout.fileno())
        os.dup2(handle.fileno(), sys.stderr.fileno())
        try:
            return demo.main(["--out", out, "--tiny"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """``pipelines/demo.py --tiny``: every step of the demo at its smallest, in a process of its own (the demo
    seeds and configures torch globally) forked with torch already imported, given a relative ``--out`` as a
    user gives it (the notebooks run from elsewhere)."""
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    log = out.parent / "demo.log"
    try:
        status = in_a_forked_process(run_tiny_demo, str(out.parent), out.name, str(log))
    except Exception as exc:  # the demo raised: its traceback is the exception's message
        status = exc
    assert status == 0, f"the demo failed ({status}):\n{log.read_text()[-10000:] if log.exists() else ''}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_on_the_demo_output(path: Path, tiny_demo: Path):
    notebook = execute(path, tiny_demo, timeout=300)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code)
    pictures = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert pictures, f"{path.name} drew no picture"
