"""The Dockerfile cannot drift from the README's install: it runs the same installer, as a non-root user,
and takes a CUDA wheel index as a build argument. (No container engine here; hadolint lints the file in
tests/run.sh.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_image_installs_with_the_script_both_readme_commands_use():
    readme = (ROOT / "README.md").read_text()
    assert "bash pipelines/demo.sh" in readme and "bash tests/run.sh" in readme
    for command in ("pipelines/demo.sh", "tests/run.sh"):  # both install through pipelines/setup.sh
        assert "pipelines/setup.sh" in (ROOT / command).read_text(), command
    runs = [args for name, args in instructions() if name == "RUN"]
    installs = [args for args in runs if "pip install" in args or "setup.sh" in args]
    assert installs and all("bash pipelines/setup.sh" in args for args in installs), installs  # no pip of its own
    copied = " ".join(args for name, args in instructions() if name == "COPY")
    for needed in (
        "pyproject.toml",
        "medssl",
        "pipelines",
        "configs",
        "tests",
        "benchmarks",
        "notebooks",
        "docs",
        "mkdocs.yml",
    ):
        assert re.search(rf"(^|\s){needed}(\s|$)", copied), f"the image lacks {needed}: the demo or tests need it"


def test_the_image_runs_as_a_user_and_takes_a_cuda_wheel_index():
    names = instructions()
    users = [args for name, args in names if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    args = {value.split("=")[0] for name, value in names if name == "ARG"}
    assert {"TORCH_SPEC", "TORCH_INDEX", "MEDSSL_EXTRAS"} <= args
    setup = (ROOT / "pipelines" / "setup.sh").read_text()
    assert "MEDSSL_TORCH_INDEX" in setup and "--index-url" in setup  # the argument reaches pip
    assert "MEDSSL_EXTRAS" in setup and "[$extras]" in setup  # so does the notebooks extra
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "demo-output" in ignored
