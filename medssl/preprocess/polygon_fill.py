"""Scanline polygon fill that gives exactly ``skimage.draw.polygon``'s pixels, without its per-pixel loop.

``skimage.draw.polygon(r, c, shape)`` tests every pixel centre of the polygon's bounding box against
every edge (O'Rourke's crossing test, *Computational Geometry in C*, ch. 7): a pixel is drawn when it
is within ``1e-12`` of a vertex, or when the edges crossing its row to the right, or those crossing
to the left, are odd in number (even-odd inside, plus the pixels on an edge). That costs
``rows × columns × vertices`` operations, which is what made an RT Structure Set's body outline
(hundreds of points on hundreds of slices) slower than loading its CT.

Here each edge is visited once per row it crosses. For one edge and one row the test "crosses to the
right of column ``x``" is a sign of ``(x0·y1 − x1·y0) / (y1 − y0)`` with ``x0 = c_i − x``,
``x1 = c_j − x`` (``y0``, ``y1`` likewise for the row); in floating point that expression is
monotone in ``x`` (each rounded step is), so the test is true on a half-line of columns. Its end is
found by evaluating skimage's very expression at the column nearest the crossing and its two
neighbours, so rounding decides boundary pixels exactly as in skimage; a prefix sum per row then
gives the parities. Where the two neighbours do not confirm the half-line (only for coordinates so
large that rounding moves a crossing by a whole pixel), the polygon is filled by skimage itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: skimage's tolerance for a pixel centre on a vertex.
VERTEX_EPS = 1e-12


def polygon_box(rows: np.ndarray, columns: np.ndarray, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``(first_row, last_row, first_column, last_column)`` that skimage tests (inclusive; empty when a
    last is below its first): the vertices' bounding box, cut at 0 and at the image edge."""
    first_row, first_column = int(max(0.0, float(rows.min()))), int(max(0.0, float(columns.min())))
    last_row = min(int(shape[0]) - 1, int(math.ceil(float(rows.max()))))
    last_column = min(int(shape[1]) - 1, int(math.ceil(float(columns.max()))))
    return first_row, last_row, first_column, last_column


def _crosses(xi, xj, y0, y1, x) -> np.ndarray:
    """skimage's crossing abscissa sign term ``(x0 * y1 - x1 * y0) / (y1 - y0)`` at column ``x``,
    operation for operation, so that it rounds alike."""
    x0 = xi - x
    x1 = xj - x
    return (x0 * y1 - x1 * y0) / (y1 - y0)


def _edge_rows(r: np.ndarray, first_row: int, last_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (edge, row) pair whose row lies within the edge's row span: edge ``e`` joins vertex ``e``
    and vertex ``e - 1`` (the last one for ``e = 0``), as skimage walks it."""
    previous = np.roll(r, 1)
    low = np.maximum(np.ceil(np.minimum(r, previous)), first_row)
    high = np.minimum(np.floor(np.maximum(r, previous)), last_row)
    counts = np.where(high >= low, high - low + 1, 0).astype(np.intp)
    edges = np.repeat(np.arange(r.size), counts)
    starts = np.repeat(low.astype(np.intp) - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return edges, starts + np.arange(edges.size)


def fill_polygon(rows: np.ndarray, columns: np.ndarray, shape: Sequence[int]) -> tuple[tuple[int, int], np.ndarray]:
    """The pixels ``skimage.draw.polygon(rows, columns, shape)`` draws, as ``((first_row, first_column),
    box)``: a boolean array over the tested bounding box (see :func:`polygon_box`), which is empty when
    the polygon misses the image. Identical pixel for pixel; see the module docstring."""
    r = np.ascontiguousarray(rows, dtype=np.float64).ravel()
    c = np.ascontiguousarray(columns, dtype=np.float64).ravel()
    first_row, last_row, first_column, last_column = polygon_box(r, c, shape)
    height, width = last_row - first_row + 1, last_column - first_column + 1
    if height <= 0 or width <= 0:
        return (max(first_row, 0), max(first_column, 0)), np.zeros((0, 0), dtype=bool)
    edge, row = _edge_rows(r, first_row, last_row)
    r_previous, c_previous = np.roll(r, 1), np.roll(c, 1)
    y = row.astype(np.float64)
    straddles = ((r[edge] > y) != (r_previous[edge] > y)) | ((r[edge] < y) != (r_previous[edge] < y))
    edge, row, y = edge[straddles], row[straddles], y[straddles]
    # skimage's shifted coordinates: vertex i at (x0, y0), the one before it at (x1, y1), the pixel at 0.
    xi, xj, y0, y1 = c[edge], c_previous[edge], r[edge] - y, r_previous[edge] - y
    right = (y0 > 0) != (y1 > 0)  # the edge straddles the row, for the crossings to the right
    left = (y0 < 0) != (y1 < 0)  # ... and for those to the left
    # The crossing's column, then skimage's test at it and its neighbours.
    nearest = np.rint((xi * y1 - xj * y0) / (y1 - y0))
    before, at, after = (_crosses(xi, xj, y0, y1, nearest + step) for step in (-1.0, 0.0, 1.0))
    confirmed = np.where(right, (before > 0) & ~(after > 0), True) & np.where(left, ~(before < 0) & (after < 0), True)
    if not confirmed.all():
        return _skimage_fill(r, c, shape, first_row, first_column, height, width)
    # Right crossings count for the columns below their end; left ones for those from theirs on.
    right_end = np.clip(nearest + (at > 0) - first_column, 0, width).astype(np.intp)
    left_start = np.clip(nearest + ~(at < 0) - first_column, 0, width).astype(np.intp)
    line = (row - first_row) * (width + 1)
    right_steps = np.bincount(line[right] + right_end[right], minlength=height * (width + 1))
    right_starts = np.bincount(line[right], minlength=height * (width + 1))
    left_steps = np.bincount(line[left] + left_start[left], minlength=height * (width + 1))
    # Parity of a count: a uint8 running sum wraps at 256, which keeps it.
    right_count = np.cumsum((right_starts - right_steps).astype(np.uint8).reshape(height, -1), 1, np.uint8)
    left_count = np.cumsum(left_steps.astype(np.uint8).reshape(height, -1), 1, np.uint8)
    box = ((right_count | left_count)[:, :width] & 1).astype(bool)
    _mark_vertices(box, r, c, first_row, first_column)
    return (first_row, first_column), box


def _mark_vertices(box: np.ndarray, r: np.ndarray, c: np.ndarray, first_row: int, first_column: int) -> None:
    """Set the pixels whose centre is within skimage's tolerance of a vertex (they are drawn whatever
    the crossings say)."""
    row, column = np.rint(r), np.rint(c)
    on = (np.abs(c - column) < VERTEX_EPS) & (np.abs(r - row) < VERTEX_EPS)
    row, column = row[on].astype(np.intp) - first_row, column[on].astype(np.intp) - first_column
    inside = (row >= 0) & (row < box.shape[0]) & (column >= 0) & (column < box.shape[1])
    box[row[inside], column[inside]] = True


def _skimage_fill(r, c, shape, first_row: int, first_column: int, height: int, width: int):
    """skimage's own fill over the same box, for polygons whose crossings rounding cannot place."""
    from skimage.draw import polygon

    rr, cc = polygon(r, c, shape=tuple(shape))
    box = np.zeros((height, width), dtype=bool)
    box[rr - first_row, cc - first_column] = True
    return (first_row, first_column), box
