"""Where ``medssl tile`` may put tiles besides "wherever there is tissue": at the coordinates of a
CLAM/TRIDENT ``.h5`` file (``--coords``), or inside/outside QuPath annotations (``--annotations``).

:class:`RegionParams` holds the cohort's choice; per slide it finds the side file, fingerprints it
(a changed file re-tiles the slide on resume) and plans the tiles. Formats: :mod:`.patch_coords`,
:mod:`.annotations`; documentation: docs/interop.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medssl.errors import SlideError
from medssl.jobs import Job
from medssl.preprocess.annotations import MODES, combine, rasterise, read_annotations
from medssl.preprocess.patch_coords import (
    check_footprint,
    coords_file,
    file_sha256,
    plan_coords_grid,
    read_patch_coords,
)
from medssl.preprocess.slides import Slide
from medssl.preprocess.tiling import Thumbnail, TileGrid, TilingParams

ANNOTATION_COLUMN = "annotation"  #: CSV manifest column: a slide's GeoJSON file (relative to the CSV)
ANNOTATION_SUFFIX = ".geojson"


@dataclass(frozen=True)
class RegionParams:
    """Tiles at imported coordinates, or restricted by annotations (not both); default: neither."""

    coords_dir: str | None = None  #: folder of ``<slide_id>.h5`` (or TRIDENT's ``<slide_id>_patches.h5``)
    annotations_dir: str | None = None  #: folder of ``<slide_id>.geojson``
    csv_annotations: bool = False  #: the CSV manifest names annotation files (column ``annotation``)
    annotation_mode: str = "include"
    annotation_classes: tuple[str, ...] = ()  #: keep only polygons of these QuPath classes (empty: all)

    def __post_init__(self) -> None:
        if self.annotation_mode not in MODES:
            raise ValueError(f"annotation mode must be one of {MODES}, got {self.annotation_mode!r}")
        if self.coords_dir is not None and self.annotated:
            raise ValueError("--coords places every tile itself; it cannot be combined with annotations")
        if self.coords_dir is not None and not Path(self.coords_dir).is_dir():
            raise ValueError(f"--coords {self.coords_dir}: not a folder")
        if self.annotations_dir is not None and not Path(self.annotations_dir).is_dir():
            raise ValueError(f"--annotations {self.annotations_dir}: not a folder")

    @property
    def annotated(self) -> bool:
        return self.annotations_dir is not None or self.csv_annotations

    def for_jobs(self, jobs: Sequence[Job]) -> "RegionParams":
        """These params, with annotations on when the CSV manifest gives any slide an annotation file."""
        named = any(job.fields.get(ANNOTATION_COLUMN) for job in jobs)
        return replace(self, csv_annotations=True) if named and not self.csv_annotations else self

    def recorded(self) -> dict[str, Any]:
        """What the cohort's choice adds to the cache's params (nothing when unused, so caches made
        before this option existed still match); folders are not recorded, each file's hash is."""
        if self.coords_dir is not None:
            return {"regions": {"coords": True}}
        if self.annotated:
            return {
                "regions": {"annotations": {"mode": self.annotation_mode, "classes": list(self.annotation_classes)}}
            }
        return {}

    # -- per slide ------------------------------------------------------------------------------
    def annotation_path(self, job: Job) -> Path | None:
        if not self.annotated:
            return None
        named = job.fields.get(ANNOTATION_COLUMN)
        if named:
            return Path(named)
        if self.annotations_dir is None:
            raise SlideError(f"{job.path}: the CSV manifest gives no annotation file for slide {job.item_id!r}")
        return Path(self.annotations_dir) / f"{job.item_id}{ANNOTATION_SUFFIX}"

    def coords_path(self, job: Job) -> Path | None:
        return None if self.coords_dir is None else coords_file(Path(self.coords_dir), job.item_id)

    def fingerprint(self, job: Job) -> dict[str, Any]:
        """The side file of a slide, by content: added to the slide's source fingerprint."""
        for key, path in (("coords", self.coords_path(job)), ("annotation", self.annotation_path(job))):
            if path is not None:
                if not path.is_file():
                    raise SlideError(f"{path}: {key} file not found for slide {job.item_id!r}")
                return {key: {"path": str(path.resolve()), "sha256": file_sha256(path)}}
        return {}

    def restrict(self, job: Job, slide: Slide, thumb: Thumbnail) -> tuple[Thumbnail, dict[str, Any]]:
        """The thumbnail with its mask combined with the slide's annotations (and ``region`` set to
        them), plus attrs to record; unchanged without annotations."""
        path = self.annotation_path(job)
        if path is None:
            return thumb, {}
        polygons = read_annotations(path, self.annotation_classes)
        if not polygons and self.annotation_mode == "include":
            raise SlideError(f"{path}: no Polygon or MultiPolygon annotation to tile inside")
        region = rasterise(polygons, thumb.mask.shape, thumb.mpp / slide.mpp)
        mask = combine(thumb.mask, region, self.annotation_mode)
        if not mask.any():
            where = "inside" if self.annotation_mode == "include" else "outside"
            raise SlideError(f"{path}: no tissue {where} the annotations (at the {thumb.mpp:g} µm/px mask resolution)")
        attrs = {
            "annotation": {
                "mode": self.annotation_mode,
                "classes": list(self.annotation_classes),
                "polygons": len(polygons),
                "region_fraction_slide": float(region.mean()),
            }
        }
        return replace(thumb, mask=mask, region=region), attrs

    def place(self, job: Job, slide: Slide, thumb: Thumbnail, params: TilingParams) -> tuple[TileGrid, dict] | None:
        """Tiles at the slide's imported coordinates (none dropped; tissue fractions recorded), or None
        without ``--coords``."""
        path = self.coords_path(job)
        if path is None:
            return None
        patches = read_patch_coords(path)
        check_footprint(patches, slide, params)
        grid = plan_coords_grid(slide, thumb, params, patches.coords)
        on_grid = int(grid.on_grid.sum()) if grid.on_grid is not None else 0
        attrs = {"placement": {"from": "coords", "on_grid": on_grid, "off_grid": len(grid) - on_grid}}
        return grid, attrs
