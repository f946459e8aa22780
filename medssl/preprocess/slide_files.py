"""Opening a slide file, and saying clearly why one cannot be opened.

``openslide.open_slide`` falls back to Pillow's whole-image reader for anything OpenSlide refuses. For a
slide cut short by an interrupted copy that is the wrong answer twice over: Pillow still reads the TIFF
header, so it decodes (or refuses as a "decompression bomb") a gigapixel image whole, and the user sees
an internal error instead of "truncated". Here a file OpenSlide refuses is first checked for truncation
(a TIFF whose tiles reach past its end), and only small images with a plain-image suffix are handed to
Pillow, after checking the size their header declares and before decoding anything.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import openslide
import tifffile
from PIL import Image, UnidentifiedImageError

from medssl.errors import SlideError
from medssl.preprocess.dicom_wsi import describe_non_wsi

#: Suffixes a plain (non-pyramidal) image may have; only these fall back to Pillow.
PLAIN_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: A plain image is decoded whole: above this many pixels (64 Mpx, about 200 MB of RGB) it must be a pyramid.
MAX_PLAIN_IMAGE_PIXELS = 64 * 2**20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide_file(path: Path) -> openslide.AbstractSlide:
    """OpenSlide's reader for ``path``, or Pillow's for a small plain image; a :class:`SlideError` naming
    the file and the reason otherwise."""
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        pass  # not a format OpenSlide knows, or one it cannot parse: find out which below
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise SlideError(f"{path}: unreadable slide ({one_line(exc)})") from None
    truncated = tiff_truncation(path)
    if truncated:
        raise SlideError(f"{path}: unreadable or truncated ({truncated}; an interrupted copy?)")
    if path.suffix.lower() == ".dcm":
        raise SlideError(f"{path}: {describe_non_wsi(path)}")
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return open_plain_image(path)
    raise SlideError(f"{path}: not a slide format OpenSlide can read")


def open_plain_image(path: Path) -> openslide.ImageSlide:
    """Pillow's reader for a small plain image. The declared size is checked before any pixel is decoded,
    and Pillow's decompression-bomb error or warning means unreadable, never an internal error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except UnidentifiedImageError:
            raise SlideError(f"{path}: not a slide format OpenSlide can read (nor a plain image)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SlideError(f"{path}: unreadable: not a pyramid OpenSlide can read, and {_too_big(exc)}") from None
        except (OSError, ValueError) as exc:
            raise SlideError(f"{path}: unreadable or truncated ({one_line(exc)})") from None
        if width * height > MAX_PLAIN_IMAGE_PIXELS:
            raise SlideError(
                f"{path}: unreadable: not a pyramid OpenSlide can read, and at {width}×{height} px too large "
                "to decode whole as a plain image; convert it to a tiled pyramidal TIFF"
            )
        return openslide.ImageSlide(str(path))


def tiff_truncation(path: Path) -> str | None:
    """Why a TIFF (SVS, NDPI, ...) file is cut short: its header or tiles point past its end; ``None``
    when the file is not a TIFF or holds all its data."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(4) not in _TIFF_MAGIC:
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tifffile warns about the very offsets we check
            with tifffile.TiffFile(path) as tif:
                ends = [
                    offset + count
                    for page in tif.pages
                    if isinstance(page, tifffile.TiffPage)
                    for offset, count in zip(page.dataoffsets, page.databytecounts)
                    if count
                ]
    except Exception as exc:  # tifffile raises many types on a broken structure; all mean "unreadable"
        return f"TIFF structure unreadable: {one_line(exc)}"
    if not ends:
        return "TIFF with no image data"
    if max(ends) > size:
        return f"the file has {size:,} bytes but its image data reach byte {max(ends):,}"
    return None


def _too_big(exc: BaseException) -> str:
    return f"too large to decode whole as a plain image ({one_line(exc)}); convert it to a tiled pyramidal TIFF"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
