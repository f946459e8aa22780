"""`medssl --help` is the first documentation a user reads: every command with its purpose and an example,
plain text, no warnings; `command_help` gives the docs the same text at a fixed width."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medssl.cli import COMMANDS, LIGHTNING_COMMANDS, build_parser, command_help, main, subparsers

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
MARKUP = ("``", ":class:", ":meth:", ":func:", "`")


def medssl(*args: str) -> subprocess.CompletedProcess:
    """``python -m medssl.cli ARGS`` on this checkout (the console script would import the installed medssl)."""
    return subprocess.run([sys.executable, "-m", "medssl.cli", *args], capture_output=True, text=True, env=ENV)


@pytest.fixture(scope="module")
def fit_help() -> subprocess.CompletedProcess:
    """``medssl fit --help`` from the command line, run once (a Lightning import: seconds)."""
    return medssl("fit", "--help")


def test_the_table_and_the_parser_name_the_same_commands_in_the_same_order():
    names = [c.name for c in COMMANDS]
    assert len(set(names)) == len(names) and set(LIGHTNING_COMMANDS) <= set(names)
    assert list(subparsers(build_parser())) == names


def test_help_lists_every_command_with_its_purpose_and_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    listing = captured.out.split("commands:", 1)[1].split("examples:", 1)[0]
    listed = [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line[2] != " "]
    assert listed == [c.name for c in COMMANDS] and listed == list(subparsers(build_parser()))
    assert all(" ".join(c.purpose.split()) in " ".join(listing.split()) for c in COMMANDS)
    examples = captured.out.split("examples:", 1)[1].replace(" \\\n      ", " ")  # continuation lines joined
    assert all(c.example in examples for c in COMMANDS)
    assert not [m for m in MARKUP if m in captured.out] and not captured.err


def test_examples_use_configs_that_exist_and_name_their_own_command():
    for command in COMMANDS:
        assert command.example.startswith(f"medssl {command.name} "), command
        for word in command.example.split():
            if word.startswith("configs/"):
                assert (ROOT / word).is_file(), f"{command.name}: {word} does not exist"


def test_fit_help_from_the_command_line_prints_no_warning(fit_help):
    """LightningCLI warns when given args while sys.argv has its own: from the command line it reads sys.argv."""
    done = fit_help
    assert done.returncode == 0, done.stderr[-2000:]
    assert not done.stderr, done.stderr[-2000:]
    assert done.stdout.startswith("usage: medssl [options] fit") and "--trainer.max_steps" in done.stdout
    assert not [m for m in MARKUP if m in done.stdout]


def test_command_help_is_plain_text_for_every_command():
    texts = {c.name: command_help(c.name) for c in COMMANDS}
    for name, text in texts.items():
        assert text.startswith(f"usage: medssl {'[options] ' if name in LIGHTNING_COMMANDS else ''}{name}"), name
        assert not [m for m in MARKUP if m in text], name
        assert max(map(len, text.splitlines())) <= 100 or name in LIGHTNING_COMMANDS, name  # usage lines overrun
        assert "example:" in text, name
    assert texts["tile"] == medssl("tile", "--help").stdout and command_help() == medssl("--help").stdout
    assert command_help(None, columns=60) != command_help(None, columns=100)


def test_command_help_of_a_lightning_command_is_what_it_prints(fit_help):
    # in a fresh process, as the docs build it: here earlier tests may have imported more LightningModules,
    # which jsonargparse lists as known subclasses
    code = "import sys; from medssl.cli import command_help; sys.stdout.write(command_help('fit'))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert fresh.stdout == fit_help.stdout and not fresh.stderr


def test_command_help_names_the_commands_when_given_an_unknown_one():
    with pytest.raises(ValueError, match="no command 'tiles'.*tile, cache-volumes"):
        command_help("tiles")
