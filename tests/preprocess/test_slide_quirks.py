"""Real-world slide files that broke `medssl tile`: cut-short copies, placeholder TIFF resolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medssl.cache import SlideCache
from medssl.cli import main as cli
from medssl.errors import SlideError
from medssl.preprocess import TilingParams, tile_slides
from medssl.preprocess.slides import Slide
from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide
from tests.manifests import manifest_rows

SMALL = SlideLayout(width=2048, height=1536, tissue=[Ellipse(1024, 768, 700, 550)])
TINY = SlideLayout(width=1024, height=768, tissue=[Ellipse(512, 384, 380, 300)])


@pytest.fixture(scope="module")
def svs_pair(tmp_path_factory) -> Path:
    """A good Aperio SVS and a copy of it cut at 60 % of its bytes, as an interrupted copy leaves it."""
    folder = tmp_path_factory.mktemp("svs")
    good = write_slide(folder / "good.svs", SMALL, mpp=0.5, downsamples=(1, 4), vendor="aperio")
    data = good.read_bytes()
    (folder / "cut.svs").write_bytes(data[: len(data) * 6 // 10])
    return folder


def test_truncated_svs_is_reported_as_truncated_and_never_decoded_whole(svs_pair, monkeypatch):
    # Pillow's limit lowered below this slide's size: the plain-image fallback that used to decode it
    # whole now raises DecompressionBombError, as it did on real gigapixel slides.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(SlideError, match=r"cut\.svs: unreadable or truncated \(the file has [\d,]+ bytes but"):
        Slide(svs_pair / "cut.svs")
    assert decoded == []


def test_truncated_svs_fails_its_row_and_the_other_slide_is_tiled(svs_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    summary = tile_slides([svs_pair], tmp_path / "c", TilingParams(target_mpp=2.0, tile_size=32), progress=False)
    manifest = manifest_rows(summary.manifest)
    assert manifest["good"]["status"] == "done" and int(manifest["good"]["tiles"]) > 0
    assert manifest["cut"]["status"] == "failed"
    assert "unreadable or truncated" in manifest["cut"]["reason"] and "internal error" not in manifest["cut"]["reason"]


def test_plain_image_fallback_refuses_a_huge_image_before_decoding(tmp_path, monkeypatch):
    from medssl.preprocess import slide_files

    Image.new("RGB", (300, 200), (200, 120, 160)).save(tmp_path / "small.png")
    with Slide(tmp_path / "small.png", fallback_mpp=1.0) as slide:  # small plain images still open
        assert (slide.vendor, slide.dimensions) == ("image", (300, 200))
    monkeypatch.setattr(slide_files, "MAX_PLAIN_IMAGE_PIXELS", 50_000)
    with pytest.raises(SlideError, match=r"small\.png: unreadable: .*300×200 px too large to decode whole"):
        Slide(tmp_path / "small.png", fallback_mpp=1.0)


def write_tiff_with_resolution(path: Path, layout: SlideLayout, resolution: float, unit: str) -> Path:
    """A tiled JPEG pyramid (levels 1 and 1/4) whose resolution tags hold ``resolution`` per ``unit``."""
    with tifffile.TiffWriter(path) as tw:
        for ds in (1, 4):
            pixels = layout.render(0, 0, layout.width // ds, layout.height // ds, ds)
            tw.write(
                pixels,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                resolution=(resolution / ds, resolution / ds),
                resolutionunit=unit,
                subfiletype=0 if ds == 1 else 1,
                metadata=None,
            )
    return path


@pytest.mark.parametrize(
    "resolution, unit, shown", [(72.0, "INCH", "72 dpi"), (300.0, "INCH", "300 dpi"), (1.0, "CENTIMETER", "1 px/cm")]
)
def test_placeholder_tiff_resolution_counts_as_no_mpp(tmp_path, resolution, unit, shown):
    path = write_tiff_with_resolution(tmp_path / "screen.tiff", TINY, resolution, unit)
    with pytest.raises(SlideError) as info:
        Slide(path)
    assert str(info.value) == (
        f"{path}: the TIFF resolution ({shown}) looks like a placeholder; "
        "give --assume-mpp or an mpp column in the CSV manifest"
    )
    with Slide(path, fallback_mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "assumed")


def test_unitless_tiff_resolution_is_no_mpp(tmp_path):
    path = write_tiff_with_resolution(tmp_path / "unitless.tiff", TINY, 1.0, "NONE")
    with pytest.raises(SlideError, match=r"no MPP in the slide metadata \(the TIFF resolution 1 has no unit\)"):
        Slide(path)


def test_72_dpi_tiff_is_refused_by_tile_then_tiled_with_assume_mpp(tmp_path):
    path = write_tiff_with_resolution(tmp_path / "dpi72.tiff", TINY, 72.0, "INCH")
    args = ["tile", str(path), "--mpp", "2", "--tile-size", "32", "--quiet"]
    assert cli([*args, "--out", str(tmp_path / "a")]) == 1
    reason = manifest_rows(tmp_path / "a" / "manifest.csv")["dpi72"]["reason"]
    assert "the TIFF resolution (72 dpi) looks like a placeholder; give --assume-mpp or an mpp column" in reason
    assert cli([*args, "--out", str(tmp_path / "b"), "--assume-mpp", "0.5"]) == 0
    cache = SlideCache(tmp_path / "b")
    meta = cache.metadata("dpi72")
    assert (meta["mpp"], meta["mpp_source"]) == (0.5, "assumed")
    # 32 target px at 2 µm/px = 128 level-0 px at the assumed 0.5 µm/px, not at 352.8
    assert meta["tile_size_level0"] == pytest.approx(128) and meta["num_tiles"] > 10
    np.testing.assert_array_equal(cache.coords("dpi72") % 128, 0)
