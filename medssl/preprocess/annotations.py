"""QuPath / GeoJSON annotations that restrict tiling to (or exclude) drawn regions (``medssl tile
--annotations``).

QuPath exports annotations as GeoJSON in level-0 pixel coordinates (x right, y down): a
FeatureCollection (or a bare list of Features, or one Feature) whose geometries are Polygons and
MultiPolygons, each ring a list of ``[x, y]`` with the first ring the outline and the others holes, and
whose ``properties.classification.name`` is the class ("Tumor", "Stroma"...). The polygons are
rasterised onto the thumbnail grid the tissue mask lives on (a mask pixel is inside when its centre is)
and combined with the tissue mask, so tiles are chosen by the same exact tissue fraction as without
annotations. Geometries other than polygons (points, lines) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon as polygon_pixels

from medssl.errors import SlideError

MODES = ("include", "exclude")  #: tissue AND annotation, or tissue AND NOT annotation


@dataclass(frozen=True)
class AnnotationPolygon:
    """One polygon in level-0 pixels: its outline and its holes (``[K, 2]`` x, y each)."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()
    classification: str | None = None


def read_annotations(path: str | Path, classes: Sequence[str] = ()) -> list[AnnotationPolygon]:
    """The polygons of a GeoJSON file, those of ``classes`` only when given. A file that is not
    GeoJSON, a malformed polygon, or a class filter that matches none of the file's polygons is a
    :class:`~medssl.errors.SlideError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlideError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlideError(f"{path}: not a GeoJSON file ({exc})") from None
    polygons = [poly for feature in _features(data, path) for poly in _feature_polygons(feature, path)]
    if classes:
        wanted = set(classes)
        chosen = [p for p in polygons if p.classification in wanted]
        if polygons and not chosen:
            found = sorted({str(p.classification) for p in polygons})
            raise SlideError(f"{path}: no annotation of class {', '.join(sorted(wanted))} (classes found: {found})")
        polygons = chosen
    return polygons


def _features(data: Any, path: Path) -> list[dict]:
    """The Features of a FeatureCollection, a list of Features (older QuPath), a Feature or a bare geometry."""
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features")
        if not isinstance(items, list):
            raise SlideError(f"{path}: FeatureCollection without a 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, dict) and "coordinates" in data:
        items = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise SlideError(f"{path}: not GeoJSON (expected a FeatureCollection, Feature or list of Features)")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise SlideError(f"{path}: item {i} is not a GeoJSON Feature")
    return items


def _feature_polygons(feature: dict, path: Path) -> list[AnnotationPolygon]:
    geometry = feature.get("geometry")
    name = _class_name(feature.get("properties") or {})
    return [AnnotationPolygon(rings[0], tuple(rings[1:]), name) for rings in _geometry_rings(geometry, path)]


def _geometry_rings(geometry: Any, path: Path) -> list[list[np.ndarray]]:
    """Each polygon of a geometry as its rings (outline first); non-polygon geometries give none."""
    if geometry is None:
        return []
    if not isinstance(geometry, dict):
        raise SlideError(f"{path}: a geometry is not a JSON object")
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        return [rings for child in geometry.get("geometries") or [] for rings in _geometry_rings(child, path)]
    if kind == "Polygon":
        return [_rings(geometry.get("coordinates"), path)]
    if kind == "MultiPolygon":
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list):
            raise SlideError(f"{path}: MultiPolygon coordinates must be a list of polygons")
        return [_rings(polygon, path) for polygon in coordinates]
    return []


def _rings(coordinates: Any, path: Path) -> list[np.ndarray]:
    if not isinstance(coordinates, list) or not coordinates:
        raise SlideError(f"{path}: a Polygon needs a list of rings")
    rings = []
    for ring in coordinates:
        try:
            points = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise SlideError(f"{path}: a polygon ring holds something other than [x, y] numbers") from None
        if points.ndim != 2 or points.shape[1] < 2 or len(points) < 3 or not np.isfinite(points).all():
            raise SlideError(f"{path}: a polygon ring must be at least 3 finite [x, y] points")
        rings.append(points[:, :2])
    return rings


def _class_name(properties: dict) -> str | None:
    """QuPath's ``classification.name`` (older exports: ``classification`` as a string)."""
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        return str(name) if name is not None else None
    return str(classification) if isinstance(classification, str) else None


def rasterise(polygons: Sequence[AnnotationPolygon], shape: tuple[int, int], l0_per_pixel: float) -> np.ndarray:
    """Boolean ``[h, w]`` mask of the mask pixels whose centre lies inside a polygon and outside its holes.

    Pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)`` mask units, i.e. level-0 ``[j·s, (j+1)·s)`` for
    ``s = l0_per_pixel``; its centre is at ``j + 0.5``. Polygons are unioned, each with its own holes cut.
    """
    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        piece = _fill(poly.exterior, shape, l0_per_pixel)
        for hole in poly.holes:
            piece &= ~_fill(hole, shape, l0_per_pixel)
        mask |= piece
    return mask


def _fill(ring: np.ndarray, shape: tuple[int, int], l0_per_pixel: float) -> np.ndarray:
    # scikit-image puts pixel (r, c) at the point (c, r); ours is at (c + 0.5, r + 0.5): shift by half.
    points = ring / l0_per_pixel - 0.5
    rows, cols = polygon_pixels(points[:, 1], points[:, 0], shape=shape)
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def combine(tissue: np.ndarray, region: np.ndarray, mode: str) -> np.ndarray:
    """``tissue AND region`` (include) or ``tissue AND NOT region`` (exclude)."""
    if mode not in MODES:
        raise ValueError(f"annotation mode must be one of {MODES}, got {mode!r}")
    return tissue & region if mode == "include" else tissue & ~region
