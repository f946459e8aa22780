"""Marker-pen strokes drawn over a synthetic slide, with their ground-truth mask.

Ink filters the light that passes through it, so a stroke multiplies the pixels under it by the ink's
transmission (per RGB channel): over glass it shows the ink's own colour, over tissue a darker mix, as
on a real scanned slide. Colours are typical marker transmissions (green, blue, black, red).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medssl.synthetic.slides import Ellipse, SlideLayout, SlideRenderer

#: RGB transmission of common marker inks (0..255).
INK_RGB = {
    "green": (40, 140, 80),
    "blue": (50, 80, 190),
    "black": (40, 40, 45),
    "red": (200, 40, 60),
}


@dataclass(frozen=True)
class PenStroke:
    """A polyline of level-0 points drawn ``width`` level-0 pixels wide in ``colour`` ink."""

    points: Sequence[tuple[float, float]]
    width: float
    colour: str = "green"

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        half = self.width / 2
        for (ax, ay), (bx, by) in zip(self.points[:-1], self.points[1:]):
            dx, dy = bx - ax, by - ay
            t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
            inside |= (x - (ax + t * dx)) ** 2 + (y - (ay + t * dy)) ** 2 <= half * half
        return inside


@dataclass
class InkedSlide:
    """``base`` with ``strokes`` drawn over it: a :class:`~medssl.synthetic.slides.SlideRenderer`."""

    base: SlideRenderer
    strokes: Sequence[PenStroke] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.base.width

    @property
    def height(self) -> int:
        return self.base.height

    def ink_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground-truth ink indicator at level-0 points."""
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for stroke in self.strokes:
            inside |= stroke.contains(x, y)
        return inside

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        pixels = self.base.render(x0, y0, w, h, downsample)
        xs = x0 + (np.arange(w) + 0.5) * downsample
        ys = y0 + (np.arange(h) + 0.5) * downsample
        x, y = np.meshgrid(xs, ys)
        for stroke in self.strokes:
            inked = stroke.contains(x, y)
            if inked.any():
                transmission = np.asarray(INK_RGB[stroke.colour], dtype=np.float32) / 255.0
                pixels[inked] = (pixels[inked] * transmission).round().astype(np.uint8)
        return pixels


def marked_slide() -> InkedSlide:
    """A 1024 × 768 slide (meant for 4 µm/px) with one tissue piece of IHC texture and green, blue and black
    strokes 180-220 µm wide across tissue and glass, crossing each other."""
    tissue = SlideLayout(width=1024, height=768, tissue=[Ellipse(512, 384, 440, 330)], texture_zoom=0.5)
    return InkedSlide(
        tissue,
        [
            PenStroke([(75, 100), (450, 350), (750, 675)], width=55, colour="green"),
            PenStroke([(150, 550), (950, 500)], width=45, colour="blue"),
            PenStroke([(800, 50), (775, 400)], width=50, colour="black"),
        ],
    )
