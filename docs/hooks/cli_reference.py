"""MkDocs hook: the command-line reference page is generated from medssl's own parsers at build time, so it
cannot drift from the code. ``docs/reference/cli.md`` holds a marker; this replaces it with every command's
``--help``."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown for every command: its purpose, an example and its exact ``--help`` text."""
    from medssl.cli import COMMANDS, command_help

    parts = ["## medssl", "", "```text", command_help(None).rstrip(), "```", ""]
    for command in COMMANDS:
        parts += [
            f"## medssl {command.name}",
            "",
            command.purpose[:1].upper() + command.purpose[1:] + ".",
            "",
            "```bash",
            command.example,
            "```",
            "",
            "```text",
            command_help(command.name).rstrip(),
            "```",
            "",
        ]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
