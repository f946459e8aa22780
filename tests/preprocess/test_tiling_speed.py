"""The fast tiling paths give exactly the pixels of the plain ones: tile-by-tile box reduction of directly
decoded JPEG tiles against OpenSlide reads reduced by Pillow; stage accounting on and off."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medssl.preprocess import stages
from medssl.preprocess.slides import Slide
from medssl.preprocess.tiff_direct import DirectTiff
from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide

#: Sides that are not multiples of the 256-px source tiles nor of 4, so reductions meet partial tiles
#: and groups that straddle the image edge (outside is white).
ODD = SlideLayout(width=1002, height=750, tissue=[Ellipse(500, 380, 420, 330)])


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("odd") / "odd.tiff", ODD, mpp=0.25, downsamples=(1,))


def reference(path, x: int, y: int, w: int, h: int, factor: int) -> np.ndarray:
    """OpenSlide's pixels (white outside the scan), reduced by Pillow's box ``reduce``."""
    with Slide(path, direct=False) as slow:
        pixels = slow.read_level(0, x, y, w, h)
    return np.asarray(Image.fromarray(pixels).reduce(factor))


@pytest.mark.parametrize(
    "x, y, out, factor",
    [
        (256, 256, (128, 96), 2),  # inside, on source-tile edges
        (100, 60, (150, 110), 2),  # inside, across source-tile edges
        (600, 400, (120, 100), 4),  # past the right and bottom edges (1002 and 750 are not multiples of 4)
        (-64, -32, (80, 60), 4),  # starts outside the image
    ],
)
def test_tile_by_tile_reduction_equals_reducing_an_openslide_read(odd_slide, monkeypatch, x, y, out, factor):
    calls = []
    real = DirectTiff.read_reduced
    monkeypatch.setattr(DirectTiff, "read_reduced", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    w, h = out[0] * factor, out[1] * factor
    with Slide(odd_slide) as fast:
        assert fast.reader == "tifffile"
        got = fast.read_resampled(0, (float(x), float(y)), (float(w), float(h)), out, "box")
    assert calls, "the tile-by-tile path was not taken"
    np.testing.assert_array_equal(got, reference(odd_slide, x, y, w, h, factor))


def test_needed_boxes_skip_far_tiles_and_keep_near_pixels_exact(odd_slide):
    """With the exact reduction a needed box needs no margin: pixels inside it are exact, a source tile
    it does not touch stays white."""
    with Slide(odd_slide) as fast:
        needed = np.array([[256.0, 256.0, 512.0, 512.0]])  # exactly source tile (1, 1)
        got = fast.read_resampled(0, (0.0, 0.0), (768.0, 768.0), (384, 384), "box", needed_l0=needed)
    want = reference(odd_slide, 0, 0, 768, 768, 2)
    np.testing.assert_array_equal(got[128:256, 128:256], want[128:256, 128:256])
    assert (got[:128] == 255).all() and not (want[:128] == 255).all()


def test_unaligned_boxes_take_the_general_path(odd_slide, monkeypatch):
    monkeypatch.setattr(DirectTiff, "read_reduced", lambda *a, **k: pytest.fail("not aligned to the factor"))
    with Slide(odd_slide) as fast:
        got = fast.read_resampled(0, (101.0, 60.0), (200.0, 100.0), (100, 50), "box")
    np.testing.assert_array_equal(got, reference(odd_slide, 101, 60, 200, 100, 2))


def test_stage_recording_charges_each_stage_once_and_is_off_by_default():
    assert stages.stage("decode") is stages.stage("reduce")  # one shared no-op when off
    with stages.recording() as totals:
        with stages.stage("outer"):
            with stages.stage("inner"):  # nested: charged to the outer stage
                sum(range(200_000))
    assert set(totals) == {"outer"} and totals["outer"] > 0
    with stages.stage("after"):
        pass
    assert "after" not in totals


def _tile_array(root, codec: str = "raw"):
    import zarr

    from medssl.preprocess.tile import StorageParams

    group = zarr.open_group(root, mode="w")
    return group.create_array(
        "tiles", shape=(70, 8, 8, 3), dtype="uint8", **StorageParams(codec=codec, chunk_tiles=32).array_kwargs(8)
    )


def _files(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_direct_chunk_writes_are_byte_identical_to_zarr(tmp_path, rng):
    from medssl.cache.raw import TileReader, slab_writer

    tiles = rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    by_zarr, direct = _tile_array(tmp_path / "zarr"), _tile_array(tmp_path / "direct")
    by_zarr[:] = tiles
    write = slab_writer(direct)
    write(0, tiles[:64])
    write(64, tiles[64:])  # the last chunk is short: padded with the fill value, as Zarr does
    files = _files(tmp_path / "zarr")
    assert _files(tmp_path / "direct") == files
    for name in files:
        assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "zarr" / name).read_bytes(), name
    np.testing.assert_array_equal(TileReader(tmp_path / "direct" / "tiles").read(np.arange(70)), tiles)
    with pytest.raises(ValueError, match="whole chunks"):
        write(16, tiles[16:48])


def test_compressed_arrays_are_written_through_zarr(tmp_path, rng):
    from medssl.cache.raw import slab_writer

    tiles = rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    array = _tile_array(tmp_path / "zstd", codec="zstd")
    slab_writer(array)(0, tiles)
    np.testing.assert_array_equal(array[:], tiles)


def test_saturation_equals_the_textbook_formula_bit_for_bit(rng):
    from medssl.preprocess.tissue import saturation

    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rgb[:4] = 0  # black: saturation 0
    rgb[4:8] = rgb[4:8, :, :1]  # grey: saturation 0
    pixels = rgb.astype(np.float32)
    cmax, cmin = pixels.max(axis=-1), pixels.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = (np.where(cmax > 0, (cmax - cmin) / cmax, 0.0) * 255.0).astype(np.float32)
    got = saturation(rgb)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
