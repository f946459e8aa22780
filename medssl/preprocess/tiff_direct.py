"""Direct decoding of tiled TIFF pyramid levels (generic TIFF, Aperio SVS) with tifffile + imagecodecs.

OpenSlide's ``read_region`` spends about 2.5 ms of CPU per 256² JPEG source tile on these files;
libjpeg-turbo through imagecodecs decodes the same tile in about 0.4 ms and returns the same pixels
(both are libjpeg-turbo with the same settings). So for levels that are plain tiled pages we decode
tiles ourselves; a slide whose pages do not match its OpenSlide levels, or whose probe tile differs
from OpenSlide's, keeps using OpenSlide. Reads use ``os.pread`` and are safe from several threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from medssl.preprocess.stages import stage

#: OpenSlide vendors whose levels are plain tiled pages of the TIFF.
DIRECT_VENDORS = ("generic-tiff", "aperio")

Box = tuple[float, float, float, float]
Boxes = Sequence[Box] | np.ndarray  #: level-pixel boxes x0, y0, x1, y1


class DirectTiff:
    """Region reads from the tiled pages that back a slide's pyramid levels."""

    def __init__(self, path: str | os.PathLike, level_dimensions: tuple[tuple[int, int], ...]):
        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.pages: dict[int, tifffile.TiffPage] = {}
        # TiffFrames (light pages tifffile yields only when asked for frames) lack the tile tags read here
        candidates = [p for p in self._tif.pages if isinstance(p, tifffile.TiffPage) and _decodable(p)]
        for level, (w, h) in enumerate(level_dimensions):
            for page in candidates:
                if (page.imagewidth, page.imagelength) == (w, h):
                    self.pages[level] = page
                    break

    def has_level(self, level: int) -> bool:
        return level in self.pages

    def read(self, level: int, x: int, y: int, w: int, h: int, needed: Boxes | None = None) -> np.ndarray:
        """``uint8 [h, w, 4]`` RGBX (X = 255) of level pixels from (x, y); outside the image or in a
        missing tile it is white. Four channels because that is Pillow's own pixel layout: the array
        becomes an image without a copy.

        ``needed`` (level-pixel boxes x0, y0, x1, y1) limits decoding to the source tiles they touch;
        the others are left white. Tissue rarely fills a block's bounding box, so this skips about a
        fifth of the decoding.
        """
        page = self.pages[level]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        x_end, y_end = min(x + w, page.imagewidth), min(y + h, page.imagelength)
        inside = x >= 0 and y >= 0 and x_end == x + w and y_end == y + h
        out = np.empty((h, w, 4), dtype=np.uint8) if inside else np.full((h, w, 4), 255, dtype=np.uint8)
        tx0, ty0 = max(x, 0) // tw, max(y, 0) // th
        tx1, ty1 = (-(-x_end // tw) if x_end > 0 else 0), (-(-y_end // th) if y_end > 0 else 0)
        wanted = _touched(needed, (tx0, ty0, tx1, ty1), tw, th)
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                index = ty * across + tx
                # Intersection of this source tile with the requested box, clipped to the image.
                sx0, sy0 = max(x, tx * tw), max(y, ty * th)
                sx1, sy1 = min(x_end, (tx + 1) * tw), min(y_end, (ty + 1) * th)
                nbytes = page.databytecounts[index]
                if not nbytes or not wanted[ty - ty0, tx - tx0]:  # missing or unneeded: background
                    with stage("copy_region"):
                        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x, :3] = 255
                    continue
                with stage("decode"):
                    data = os.pread(self._fd, nbytes, page.dataoffsets[index])
                    tile = self._decode(page, data, index)
                with stage("copy_region"):
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                        sy0 - ty * th : sy1 - ty * th, sx0 - tx * tw : sx1 - tx * tw
                    ]
        return out

    def read_reduced(
        self, level: int, x: int, y: int, w: int, h: int, factor: int, needed: Boxes | None = None
    ) -> np.ndarray:
        """``read(level, x, y, w, h, needed)`` reduced by ``factor`` with Pillow's box ``reduce``, as
        ``uint8 [h // factor, w // factor, 3]`` RGB, with identical pixels to reducing the full read.

        Needs ``x``, ``y``, ``w``, ``h`` and the source tile sides to be multiples of ``factor`` (see
        :meth:`can_reduce`): then every output pixel averages pixels of one source tile, so each tile is
        reduced right after decoding, while it is in cache, and the full-resolution region never exists
        (it would be ``factor``² times larger, and filling it cost more than decoding).
        """
        page = self.pages[level]
        tw, th = page.tilewidth, page.tilelength
        if not self.can_reduce(level, x, y, w, h, factor):
            raise ValueError(f"{self.path}: box {(x, y, w, h)} is not aligned for a {factor}× reduction")
        across, down = -(-page.imagewidth // tw), -(-page.imagelength // th)
        region = np.full((h // factor, w // factor, 3), 255, dtype=np.uint8)
        buffer = np.empty((th, tw, 4), dtype=np.uint8)
        tx0, ty0 = x // tw, y // th
        tx1, ty1 = -(-(x + w) // tw), -(-(y + h) // th)
        wanted = _touched(needed, (tx0, ty0, tx1, ty1), tw, th)
        for ty in range(max(ty0, 0), min(ty1, down)):
            for tx in range(max(tx0, 0), min(tx1, across)):
                index = ty * across + tx
                nbytes = page.databytecounts[index]
                if not nbytes or not wanted[ty - ty0, tx - tx0]:  # missing or unneeded: white
                    continue
                with stage("decode"):
                    data = os.pread(self._fd, nbytes, page.dataoffsets[index])
                    tile = self._decode(page, data, index, buffer)
                with stage("reduce"):
                    # Pixels past the image edge are white, as in read(); then the part inside the box.
                    tile[:, max(0, page.imagewidth - tx * tw) :, :3] = 255
                    tile[max(0, page.imagelength - ty * th) :, :, :3] = 255
                    sx0, sy0 = max(x, tx * tw), max(y, ty * th)
                    sx1, sy1 = min(x + w, (tx + 1) * tw), min(y + h, (ty + 1) * th)
                    box = (sx0 - tx * tw, sy0 - ty * th, sx1 - tx * tw, sy1 - ty * th)
                    piece = Image.frombuffer("RGBX", (tw, th), tile, "raw", "RGBX", 0, 1).reduce(factor, box)
                with stage("copy_region"):
                    # Packed to RGB while small and in cache (a whole-region pack is a slow cold pass).
                    pw, ph = piece.size
                    rgb = np.frombuffer(piece.tobytes("raw", "RGB"), dtype=np.uint8).reshape(ph, pw, 3)
                    ox, oy = (sx0 - x) // factor, (sy0 - y) // factor
                    region[oy : oy + ph, ox : ox + pw] = rgb
        return region

    def can_reduce(self, level: int, x: int, y: int, w: int, h: int, factor: int) -> bool:
        """Whether :meth:`read_reduced` applies: the box and the source tiles fall on ``factor`` groups."""
        page = self.pages[level]
        return factor >= 1 and all(v % factor == 0 for v in (x, y, w, h, page.tilewidth, page.tilelength))

    @staticmethod
    def _decode(page: tifffile.TiffPage, data: bytes, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """One source tile as opaque ``[th, tw, 4]`` RGBX, into ``out`` (C-contiguous) when given for JPEG.
        JPEG goes straight to RGBX in libjpeg-turbo (as fast as RGB, and rows then copy as whole memory
        runs); other codecs through tifffile."""
        th, tw = page.tilelength, page.tilewidth
        if page.compression == tifffile.COMPRESSION.JPEG and not page.extrasamples:
            jfif = data[6:10] == b"JFIF"
            colorspace, _ = tifffile.tifffile.jpeg_decode_colorspace(page.photometric, page.planarconfig, (), jfif)
            return imagecodecs.jpeg8_decode(
                data,
                tables=page.jpegtables,
                colorspace=colorspace,
                outcolorspace=imagecodecs.JPEG8.CS.EXT_RGBX,
                out=out,
            ).reshape(th, tw, 4)
        segment = page.decode(data, index, jpegtables=page.jpegtables)[0]
        if segment is None:  # tifffile's answer for an empty tile, which read() never decodes
            raise ValueError(f"{page}: source tile {index} holds no data")
        rgb = segment.reshape(th, tw, -1)
        tile = np.full((th, tw, 4), 255, dtype=np.uint8)
        tile[..., :3] = rgb[..., :3]
        return tile

    def close(self) -> None:
        os.close(self._fd)
        self._tif.close()


def _touched(needed: Boxes | None, span: tuple[int, int, int, int], tw: int, th: int) -> np.ndarray:
    """Which source tiles of ``span`` (tile indices x0, y0, x1, y1) intersect any needed box."""
    tx0, ty0, tx1, ty1 = span
    if needed is None:
        return np.ones((ty1 - ty0, tx1 - tx0), dtype=bool)
    wanted = np.zeros((ty1 - ty0, tx1 - tx0), dtype=bool)
    for bx0, by0, bx1, by1 in needed:
        wanted[
            max(int(by0) // th - ty0, 0) : max(-(-int(by1) // th) - ty0, 0),
            max(int(bx0) // tw - tx0, 0) : max(-(-int(bx1) // tw) - tx0, 0),
        ] = True
    return wanted


def _decodable(page: tifffile.TiffPage) -> bool:
    """8-bit RGB tiled pages whose codec tifffile decodes (JPEG, deflate, LZW, none, ...)."""
    try:
        return (
            page.is_tiled
            and page.samplesperpixel in (3, 4)
            and page.bitspersample == 8
            and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
            and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
            and page.tiledepth == 1
        )
    except Exception:  # unusual tags: leave the page to OpenSlide
        return False
