"""Slide access: MPP from every metadata path, level choice, exact resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medssl.errors import SlideError
from medssl.preprocess.slides import Slide, magnification_to_mpp
from tests.layouts import LAYOUT


def test_mpp_from_generic_tiff_resolution_tags(slides_dir):
    with Slide(slides_dir / "generic-025.tiff") as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "metadata"
        assert slide.vendor == "generic-tiff"
        assert slide.level_count == 3


def test_mpp_from_aperio_description(slides_dir):
    with Slide(slides_dir / "aperio-050.svs") as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.objective_power == pytest.approx(20)


def test_missing_mpp_is_refused_with_a_way_out(bad_dir):
    with pytest.raises(SlideError, match=r"no-mpp\.tiff: no MPP.*--assume-mpp"):
        Slide(bad_dir / "no-mpp.tiff")
    with Slide(bad_dir / "no-mpp.tiff", fallback_mpp=0.3) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.3, "assumed")


def test_override_beats_metadata_and_fallback_does_not(slides_dir):
    with Slide(slides_dir / "generic-025.tiff", mpp_override=0.26) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.26, "given")
    with Slide(slides_dir / "generic-025.tiff", fallback_mpp=0.9) as slide:
        assert slide.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("name, reason", [("notes.tiff", "not a slide format"), ("missing.svs", "file not found")])
def test_unreadable_inputs_name_the_file(bad_dir, name, reason):
    with pytest.raises(SlideError, match=reason) as info:
        Slide(bad_dir / name)
    assert name in str(info.value)


def test_level_just_finer_than_target(slides_dir):
    with Slide(slides_dir / "generic-025.tiff") as slide:  # levels at 0.25, 1.0, 4.0 µm/px
        assert slide.level_for(0.25) == 0
        assert slide.level_for(0.5) == 0
        assert slide.level_for(1.0) == 1
        assert slide.level_for(3.9) == 1
        assert slide.level_for(8.0) == 2


def test_magnification_is_converted_without_rounding():
    assert magnification_to_mpp(40) == 0.25
    assert magnification_to_mpp(20) == 0.5
    assert magnification_to_mpp(37.7) == pytest.approx(10 / 37.7)


def test_read_resampled_matches_ground_truth_at_target_scale(slides_dir):
    """A box read at 0.5 µm/px from a 0.25 µm/px slide shows what the layout shows at that scale."""
    with Slide(slides_dir / "generic-025.tiff") as slide:
        origin, side = (1000.0, 1400.0), 224
        got = slide.read_resampled(0, origin, (2 * side, 2 * side), (side, side)).astype(float)
    right = LAYOUT.render(1000, 1400, side, side, downsample=2.0).astype(float)
    wrong = LAYOUT.render(1000, 1400, side, side, downsample=1.0).astype(float)
    err_right, err_wrong = np.abs(got - right).mean(), np.abs(got - wrong).mean()
    assert err_right < 0.6 * err_wrong


@pytest.mark.parametrize("name", ["generic-025.tiff", "aperio-050.svs"])
def test_direct_tiff_decoding_equals_openslide_everywhere(slides_dir, name, rng):
    with Slide(slides_dir / name) as fast, Slide(slides_dir / name, direct=False) as slow:
        assert (fast.reader, slow.reader) == ("tifffile", "openslide")
        for level in range(fast.level_count):
            w, h = fast._osr.level_dimensions[level]
            boxes = [(0, 0, 300, 200), (w - 100, h - 50, 300, 200), (-20, -30, 64, 64)]  # edges and outside
            boxes += [(int(rng.integers(0, w)), int(rng.integers(0, h)), 97, 131) for _ in range(5)]
            for box in boxes:
                np.testing.assert_array_equal(fast.read_level(level, *box), slow.read_level(level, *box))


def test_fast_integer_reduction_equals_general_box_resize(slides_dir):
    from PIL import Image

    with Slide(slides_dir / "generic-025.tiff") as slide:
        fast = slide.read_resampled(0, (512.0, 768.0), (512.0, 384.0), (256, 192), "box")
        pixels = slide.read_level(0, 512, 768, 512, 384)
    general = np.asarray(Image.fromarray(pixels).resize((256, 192), Image.Resampling.BOX, box=(0, 0, 512, 384)))
    assert np.abs(fast.astype(int) - general.astype(int)).max() <= 1


@pytest.mark.parametrize("direct", [True, False])
def test_skipping_unneeded_source_tiles_keeps_needed_pixels_exact(slides_dir, direct):
    """A needed box ending exactly on a source-tile edge: the neighbour tile is still decoded because
    the resize filter reaches into it; pixels outside the reach may be white."""
    with Slide(slides_dir / "generic-025.tiff", direct=direct) as slide:
        args = (0, (256.0, 256.0), (600.0, 600.0), (233, 233), "bilinear")
        full = slide.read_resampled(*args)
        part = slide.read_resampled(*args, needed_l0=np.array([[256.0, 256.0, 512.0, 512.0]]))
    inside = math.ceil((512 - 256) / 600 * 233)  # output pixels whose footprint meets the needed box
    np.testing.assert_array_equal(part[:inside, :inside], full[:inside, :inside])
    assert (part[-20:, -20:] == 255).all() and not (full[-20:, -20:] == 255).all()


def test_direct_decoder_that_disagrees_with_openslide_is_not_used(slides_dir, monkeypatch):
    from medssl.preprocess.tiff_direct import DirectTiff

    real_read = DirectTiff.read

    def off_by_one(self, *args, **kwargs):
        pixels = real_read(self, *args, **kwargs)
        pixels[..., 0] ^= 1
        return pixels

    monkeypatch.setattr(DirectTiff, "read", off_by_one)
    with Slide(slides_dir / "generic-025.tiff") as slide:
        assert slide.reader == "openslide"
