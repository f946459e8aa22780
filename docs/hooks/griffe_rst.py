"""A griffe extension for the API reference: medssl's docstrings are written for reading in an editor, with
reStructuredText roles (:class:`~medssl.cache.SlideCache`) and ``literals``; the site shows them as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`~?([^`]+)`")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def plain_markdown(text: str) -> str:
    """``x`` → `x`; :class:`~a.b.C` → `C`; :func:`a.b.f` → `a.b.f` (what Sphinx would print)."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if match.group(0).split("`", 1)[1].startswith("~") else target
        return f"`{shown}`"

    return DOUBLE_BACKTICKS.sub(r"`\1`", ROLE.sub(role, text))


class PlainRst(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_markdown(obj.docstring.value)
