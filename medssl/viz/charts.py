"""Small charts drawn with Pillow (medssl keeps matplotlib out of its dependencies): a metric against a
few x positions, one line per series, with a ± spread bar at each point — the label-efficiency plot."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from medssl.viz.qc import save_png_atomically

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_labels: Sequence[str],
    title: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    x_title: str = "label fraction",
    size: tuple[int, int] = (640, 420),
) -> Image.Image:
    """``series``: name → one ``(mean, spread)`` per x position (evenly spaced, labelled ``x_labels``).
    Points are joined by lines; each has a vertical bar of ± spread. ``y_range`` defaults to the data's."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 60
    values = [m + s * sign for points in series.values() for m, s in points for sign in (-1, 1)]
    low, high = y_range if y_range is not None else (min(values, default=0.0), max(values, default=1.0))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def x_at(k: int) -> float:
        return left + (k + 0.5) * (width - left - right) / max(1, len(x_labels))

    def y_at(v: float) -> float:
        return top + (high - v) / (high - low) * (height - top - bottom)

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    digits = max(2, math.ceil(-math.log10((high - low) / 4)) + 1)  # ticks that differ when printed
    for k in range(5):
        v = low + (high - low) * k / 4
        draw.line((left - 4, y_at(v), left, y_at(v)), fill="black")
        draw.text((4, y_at(v) - 6), f"{v:.{digits}f}", fill="black")
    for k, label in enumerate(x_labels):
        draw.text((x_at(k) - 3 * len(label), height - bottom + 8), label, fill="black")
    draw.text((left, 12), title, fill="black")
    draw.text((left, height - 24), f"{y_label} against {x_title}", fill="black")
    for index, (name, points) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        xy = [(x_at(k), y_at(m)) for k, (m, _) in enumerate(points)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for (x, y), (m, s) in zip(xy, points):
            draw.line((x, y_at(m - s), x, y_at(m + s)), fill=colour, width=1)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((width - right - 150, height - bottom - 14 * (len(series) - index) - 6), f"- {name}", fill=colour)
    return image


def save_line_chart(path: str | os.PathLike, *args, **kwargs) -> Path:
    """:func:`line_chart` written atomically as a PNG."""
    return save_png_atomically(line_chart(*args, **kwargs), Path(path))
