"""Whole-slide access through OpenSlide: physical resolution (MPP), pyramid levels, exact resampling.

Everything here works in level-0 pixel coordinates, the convention OpenSlide, QuPath and the
cache share. Resampling to a target MPP is exact (a float source box, never rounded to a nominal
magnification) and reads go through regions large enough that every source JPEG tile is decoded
about once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openslide
from PIL import Image

from medssl.errors import SlideError
from medssl.jobs import SourceFingerprint, strip_suffixes
from medssl.preprocess.dicom_wsi import series_fingerprint, series_of, series_slide_id
from medssl.preprocess.slide_files import one_line, open_slide_file
from medssl.preprocess.stages import stage
from medssl.preprocess.tiff_direct import DIRECT_VENDORS, DirectTiff

if TYPE_CHECKING:
    from tifffile import TiffPage

#: File name suffixes treated as slides when a folder is given.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
)

#: An MPP given by the user (CSV column, --assume-mpp) must lie in this range.
_PLAUSIBLE_MPP = (0.01, 100.0)
#: A level-0 MPP in the metadata outside this range is no scanner's: a placeholder (72 dpi = 352.8 µm/px,
#: 300 dpi = 84.7, 1200 dpi = 21.2, 1 px/cm = 10,000) or corrupt, so it counts as no MPP at all. A 1.25×
#: objective scans at about 8 µm/px; nothing at level 0 is coarser than 20.
_SCANNER_MPP = (0.01, 20.0)

RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def magnification_to_mpp(magnification: float) -> float:
    """Convert an objective magnification to MPP with the common 10 µm/px ÷ magnification rule.

    The result is one physical resolution for the whole cohort (40× → 0.25 µm/px), never a
    per-scanner nominal level.
    """
    if magnification <= 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    return 10.0 / magnification


class Slide:
    """An open slide with its physical resolution.

    ``mpp`` is the level-0 microns per pixel: ``mpp_override`` if given (a CSV ``mpp`` column), else
    the slide's metadata, else ``fallback_mpp`` (``--assume-mpp``). A slide with none is refused.
    ``direct=False`` forces every read through OpenSlide (see :mod:`medssl.preprocess.tiff_direct`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mpp_override: float | None = None,
        fallback_mpp: float | None = None,
        direct: bool = True,
    ):
        self.path = Path(path)
        self._direct: DirectTiff | None = None
        if not self.path.exists():
            raise SlideError(f"{self.path}: file not found")
        if self.path.is_dir() and self.path.suffix.lower() != ".mrxs":
            raise SlideError(f"{self.path}: is a folder, not a slide file")
        self._osr = open_slide_file(self.path)
        try:
            self.vendor = self._osr.properties.get("openslide.vendor", "image")
            self._probe()
            self.mpp, self.mpp_source = self._resolve_mpp(mpp_override, fallback_mpp)
            self._direct = self._open_direct() if direct else None
        except BaseException:
            self._osr.close()
            raise

    def _probe(self) -> None:
        """Read one pixel at the far corner of every level: a truncated file fails here, up front,
        with a clear reason, instead of halfway through its tiles."""
        for level, (w, h) in enumerate(self._osr.level_dimensions):
            dx, dy = self._osr.dimensions[0] / w, self._osr.dimensions[1] / h
            try:
                self._osr.read_region((int((w - 1) * dx), int((h - 1) * dy)), level, (1, 1))
            except (openslide.OpenSlideError, OSError) as exc:  # OSError: PIL, for plain images
                raise SlideError(
                    f"{self.path}: unreadable or truncated (level {level} cannot be read: {one_line(exc)})"
                ) from None

    # -- metadata -----------------------------------------------------------------------------
    def _resolve_mpp(self, override: float | None, fallback: float | None) -> tuple[float, str]:
        if override is not None:
            return self._plausible(override, "given"), "given"
        props = self._osr.properties
        try:
            mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
            mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
        except (KeyError, ValueError):
            mpp_x = mpp_y = math.nan
        why_not = _untrusted_mpp(props, mpp_x, mpp_y)
        if why_not:  # placeholder, corrupt or absent: what --assume-mpp is for
            if fallback is not None:
                return self._plausible(fallback, "assumed"), "assumed"
            raise SlideError(f"{self.path}: {why_not}; give --assume-mpp or an mpp column in the CSV manifest")
        if abs(mpp_x - mpp_y) > 0.01 * max(mpp_x, mpp_y):
            raise SlideError(f"{self.path}: non-square pixels (mpp-x {mpp_x}, mpp-y {mpp_y}) are not supported")
        return (mpp_x + mpp_y) / 2.0, "metadata"

    def _plausible(self, mpp: float, how: str) -> float:
        if not _PLAUSIBLE_MPP[0] <= float(mpp) <= _PLAUSIBLE_MPP[1]:
            raise SlideError(f"{self.path}: {how} MPP {mpp} is not plausible (expected 0.01..100 µm/px)")
        return float(mpp)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self._osr.dimensions

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    def level_downsample(self, level: int) -> tuple[float, float]:
        """Exact per-axis downsample of a level, from its dimensions (not OpenSlide's averaged value)."""
        w0, h0 = self._osr.dimensions
        wl, hl = self._osr.level_dimensions[level]
        return w0 / wl, h0 / hl

    def level_mpp(self, level: int) -> float:
        return self.mpp * max(self.level_downsample(level))

    def level_for(self, target_mpp: float) -> int:
        """The coarsest level whose MPP is not coarser than ``target_mpp`` (the level just finer)."""
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * (1 + 1e-6):
                best = level
        return best

    @property
    def objective_power(self) -> float | None:
        value = self._osr.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    # -- pixels -------------------------------------------------------------------------------
    def _open_direct(self) -> DirectTiff | None:
        """Direct tile decoding for levels where it gives exactly OpenSlide's pixels (see tiff_direct)."""
        if self.vendor not in DIRECT_VENDORS:
            return None
        direct = None
        try:
            direct = DirectTiff(self.path, self._osr.level_dimensions)
            for level in list(direct.pages):
                box = _probe_box(direct.pages[level])
                slow = _rgb_array(self._read_openslide(level, *box))
                if not np.array_equal(direct.read(level, *box)[..., :3], slow):
                    del direct.pages[level]
            if not direct.pages:
                raise ValueError("no level can be decoded directly")
        except Exception:  # anything unexpected in the TIFF structure: OpenSlide reads it
            if direct is not None:
                direct.close()
            return None
        return direct

    @property
    def reader(self) -> str:
        """Which decoder serves pixel reads: 'tifffile' (direct, for tiled TIFF/SVS levels) or 'openslide'."""
        return "tifffile" if self._direct is not None else "openslide"

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``uint8 [h, w, 3]`` pixels of ``level`` from level pixel (x, y); outside the scan is white."""
        return _rgb_array(self._region(level, x, y, w, h))

    def _region(self, level: int, x: int, y: int, w: int, h: int, needed=None) -> Image.Image:
        """An RGB or RGBX Pillow image of level pixels (both are Pillow's native 4-byte layout).
        ``needed`` (level-pixel boxes) lets the direct decoder skip source tiles nobody will use."""
        try:
            if self._direct is not None and self._direct.has_level(level):
                pixels = self._direct.read(level, x, y, w, h, needed)
                return Image.frombuffer("RGBX", (w, h), pixels, "raw", "RGBX", 0, 1)
            if needed is None:
                return self._read_openslide(level, x, y, w, h)
            # OpenSlide decodes whatever a request covers: read only the rows of needed boxes.
            canvas = Image.new("RGB", (w, h), (255, 255, 255))
            for rx0, ry0, rx1, ry1 in _row_runs(needed, (x, y, x + w, y + h)):
                canvas.paste(self._read_openslide(level, rx0, ry0, rx1 - rx0, ry1 - ry0), (rx0 - x, ry0 - y))
            return canvas
        except (openslide.OpenSlideError, OSError, ValueError, RuntimeError) as exc:
            raise SlideError(f"{self.path}: read failed at level {level} ({one_line(exc)})") from None

    def _read_openslide(self, level: int, x: int, y: int, w: int, h: int) -> Image.Image:
        dx, dy = self.level_downsample(level)
        return _rgba_to_rgb_on_white(self._osr.read_region((round(x * dx), round(y * dy)), level, (w, h)))

    def read_resampled(
        self,
        level: int,
        origin: tuple[float, float],
        size_l0: tuple[float, float],
        out_size: tuple[int, int],
        resample: str = "box",
        needed_l0: np.ndarray | None = None,
    ) -> np.ndarray:
        """Read the level-0 box ``origin`` + ``size_l0`` from ``level`` and resize it to ``out_size``.

        ``needed_l0`` (``[K, 4]`` level-0 boxes) are the parts anyone will look at; pixels farther
        than the resize filter's reach from all of them may be left white (not decoded).

        The box may be fractional; the resize maps it exactly (Pillow's ``box``). An exact integer
        reduction of an aligned box with the ``box`` filter takes Pillow's much faster ``reduce``; on
        directly decoded levels it is done source tile by source tile (same pixels, no full-size region).
        Returns ``uint8 [H, W, 3]``; pixels outside the scanned area are white.
        """
        dx, dy = self.level_downsample(level)
        # The box in read-level pixels, then relative to the integer pixel we start reading at.
        lx, ly = origin[0] / dx, origin[1] / dy
        x, y = math.floor(lx + 1e-9), math.floor(ly + 1e-9)
        left, top = lx - x, ly - y
        right, bottom = left + size_l0[0] / dx, top + size_l0[1] / dy
        fx, fy = (right - left) / out_size[0], (bottom - top) / out_size[1]
        exact = _near_int(left) and _near_int(top) and _near_int(fx) and abs(fx - fy) < 1e-9
        if exact and resample == "box" and round(fx) > 1:
            reduced = self._reduced_direct(level, x, y, out_size, round(fx), needed_l0)
            if reduced is not None:
                return reduced
        needed = None
        if needed_l0 is not None:
            reach = 2 * math.ceil(max(fx, fy)) + 2  # filter support in read-level pixels, with room
            scale = np.array([dx, dy, dx, dy])
            needed = needed_l0 / scale + np.array([-reach, -reach, reach, reach])
        image = self._region(level, x, y, math.ceil(right - 1e-9), math.ceil(bottom - 1e-9), needed)
        if exact and (round(fx) == 1 or resample == "box"):
            factor = round(fx)
            wanted = (out_size[0] * factor, out_size[1] * factor)
            with stage("reduce"):
                if image.size != wanted:
                    image = image.crop((0, 0, *wanted))
                if factor > 1:
                    image = image.reduce(factor)
        else:
            with stage("reduce"):
                image = image.resize(out_size, RESAMPLE_FILTERS[resample], box=(left, top, right, bottom))
        with stage("rgb_pack"):
            return _rgb_array(image)

    def _reduced_direct(
        self, level: int, x: int, y: int, out_size: tuple[int, int], factor: int, needed_l0: np.ndarray | None
    ) -> np.ndarray | None:
        """An exact ``factor``× box reduction decoded and reduced source tile by source tile (see
        :meth:`DirectTiff.read_reduced`), or None where that path does not apply. Every output pixel
        averages its own ``factor``² group, so ``needed_l0`` needs no margin for the filter's reach."""
        direct = self._direct
        w, h = out_size[0] * factor, out_size[1] * factor
        if direct is None or not direct.has_level(level) or not direct.can_reduce(level, x, y, w, h, factor):
            return None
        dx, dy = self.level_downsample(level)
        needed = None if needed_l0 is None else needed_l0 / np.array([dx, dy, dx, dy])
        try:
            return direct.read_reduced(level, x, y, w, h, factor, needed)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SlideError(f"{self.path}: read failed at level {level} ({one_line(exc)})") from None

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._osr.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _probe_box(page: TiffPage) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the source tile holding the middle of a tiled page: comparing one whole tile
    checks the decoding as well as a larger box, and costs each decoder one tile instead of four."""
    tw, th = page.tilewidth, page.tilelength
    x, y = (page.imagewidth // 2) // tw * tw, (page.imagelength // 2) // th * th
    return x, y, min(tw, page.imagewidth - x), min(th, page.imagelength - y)


def _rgba_to_rgb_on_white(region: Image.Image) -> Image.Image:
    """OpenSlide returns RGBA with alpha 0 outside the scan; paint that white. (RGB, not opaque RGBA:
    Pillow premultiplies RGBA around every resize.)"""
    if region.mode != "RGBA":
        return region.convert("RGB")
    alpha = region.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return region.convert("RGB")
    background = Image.new("RGB", region.size, (255, 255, 255))
    background.paste(region.convert("RGB"), mask=alpha)
    return background


def _row_runs(boxes: np.ndarray, bounds: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """Integer boxes clipped to ``bounds``, with boxes of the same rows merged into horizontal runs."""
    bx0, by0, bx1, by1 = bounds
    rows: dict[tuple[int, int], list[list[int]]] = {}
    for x0, y0, x1, y1 in boxes:
        key = (max(by0, math.floor(y0)), min(by1, math.ceil(y1)))
        span = [max(bx0, math.floor(x0)), min(bx1, math.ceil(x1))]
        if key[0] < key[1] and span[0] < span[1]:
            rows.setdefault(key, []).append(span)
    runs = []
    for (y0, y1), spans in sorted(rows.items()):
        spans.sort()
        merged = [spans[0]]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        runs.extend((a, y0, b, y1) for a, b in merged)
    return runs


def _rgb_array(image: Image.Image) -> np.ndarray:
    """Pack an RGB/RGBX image into a contiguous read-only ``[H, W, 3]`` array (one fast C pass;
    slicing channels out of a 4-channel array in NumPy is five times slower)."""
    w, h = image.size
    return np.frombuffer(image.tobytes("raw", "RGB"), dtype=np.uint8).reshape(h, w, 3)


def _near_int(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def _untrusted_mpp(props, mpp_x: float, mpp_y: float) -> str | None:
    """Why the metadata MPP cannot be used (absent, a TIFF resolution placeholder, no scanner's), or None."""
    unit = props.get("tiff.ResolutionUnit")
    if math.isnan(mpp_x) or math.isnan(mpp_y):
        if unit == "none" and "tiff.XResolution" in props:
            return f"no MPP in the slide metadata (the TIFF resolution {props['tiff.XResolution']} has no unit)"
        return "no MPP in the slide metadata"
    if all(_SCANNER_MPP[0] <= m <= _SCANNER_MPP[1] for m in (mpp_x, mpp_y)):
        return None
    if unit in ("inch", "centimeter") and "tiff.XResolution" in props:
        per = "dpi" if unit == "inch" else "px/cm"
        return f"the TIFF resolution ({float(props['tiff.XResolution']):g} {per}) looks like a placeholder"
    return f"implausible MPP in the slide metadata ({mpp_x:g}, {mpp_y:g} µm/px)"


def slide_item_id(path: Path) -> str:
    """A slide's default id: the file name without its suffix; for a DICOM series, see
    :func:`~medssl.preprocess.dicom_wsi.series_slide_id`."""
    series = series_of(path) if path.suffix.lower() == ".dcm" else None
    return series_slide_id(series) if series is not None else strip_suffixes(path, SLIDE_SUFFIXES)


def slide_source(path: Path) -> dict:
    """The fingerprint of everything a slide is read from: its file, or every file of a DICOM series."""
    return series_fingerprint(path) or SourceFingerprint.of(path).as_dict()
