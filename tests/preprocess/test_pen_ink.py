"""Marker ink is not tissue: found on the thumbnail, kept out of the tiles, and never confused with stains."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from PIL import Image

from medssl.cache import SlideCache
from medssl.cache.store import stored_params
from medssl.cli import main as cli
from medssl.preprocess import TissueParams
from medssl.preprocess.tissue import find_tissue
from medssl.synthetic.multistain import StainedSection, random_case
from medssl.synthetic.pen import marked_slide
from medssl.synthetic.slides import SlideLayout, write_slide
from tests.layouts import LAYOUT

MPP, MASK_MPP = 4.0, 8.0  # 2 level-0 pixels per thumbnail pixel
INKED = marked_slide()  # green, blue and black strokes 180-220 µm wide
TISSUE = cast(SlideLayout, INKED.base)


def on_thumbnail(truth, shape: tuple[int, int], ds: float) -> np.ndarray:
    """A level-0 ground truth sampled at the centres of thumbnail pixels."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return truth((xs + 0.5) * ds, (ys + 0.5) * ds)


@pytest.fixture(scope="module")
def inked_caches(tmp_path_factory):
    """The inked slide tiled with ink detection on (default) and off (--pen-ink off)."""
    folder = tmp_path_factory.mktemp("pen")
    write_slide(folder / "inked.tiff", INKED, mpp=MPP, downsamples=(1, 2))
    args = ["tile", str(folder / "inked.tiff"), "--mpp", "8", "--tile-size", "16", "--min-tissue", "0.75", "--quiet"]
    assert cli([*args, "--out", str(folder / "on")]) == 0
    assert cli([*args, "--out", str(folder / "off"), "--pen-ink", "off"]) == 0
    return SlideCache(folder / "on"), SlideCache(folder / "off")


def tile_ink_fractions(cache: SlideCache) -> np.ndarray:
    """Ground-truth ink share of every kept tile (16 px at 8 µm/px: 32 level-0 px square, 8×8 samples)."""
    offsets = (np.arange(8) + 0.5) * 4
    ox, oy = np.meshgrid(offsets, offsets)
    return np.array([INKED.ink_at(x + ox, y + oy).mean() for x, y in cache.coords("inked")])


def test_pen_strokes_are_masked_and_kept_tiles_avoid_them(inked_caches):
    on, off = inked_caches
    ink = on.pen_mask("inked")
    drawn = on_thumbnail(INKED.ink_at, ink.shape, MASK_MPP / MPP)
    iou = (ink & drawn).sum() / (ink | drawn).sum()
    assert iou > 0.7, iou
    assert not (on.tissue_mask("inked") & ink).any()  # ink is not tissue
    meta = on.metadata("inked")
    tissue_or_ink = on_thumbnail(lambda x, y: TISSUE.tissue_at(x, y) | INKED.ink_at(x, y), ink.shape, 2.0)
    assert meta["pen_fraction"] == pytest.approx(drawn.sum() / tissue_or_ink.sum(), abs=0.05)
    with_ink, without = tile_ink_fractions(off), tile_ink_fractions(on)
    assert (with_ink > 0.5).sum() > 30  # the old behaviour: many tiles mostly ink
    assert without.max() <= 0.3 and without.mean() < 0.02
    assert on.metadata("inked")["num_tiles"] < off.metadata("inked")["num_tiles"]
    assert off.metadata("inked")["pen_fraction"] == 0.0 and not off.pen_mask("inked").any()


def test_qc_picture_shows_the_ink(inked_caches):
    on, _ = inked_caches
    picture = np.asarray(Image.open(on.path.parent / "qc" / "inked.png").convert("RGB")).astype(int)
    magenta = (np.abs(picture - (230, 0, 200)).sum(axis=-1) < 10).mean()
    assert magenta > 0.005


@pytest.mark.parametrize("mask_mpp", [8.0, 2.0])
def test_real_stain_colours_are_not_ink(mask_mpp, rng):
    """IHC (scikit-image's real image: haematoxylin and DAB) and H&E / nuclear / membranous DAB re-stained
    from it, at the default mask resolution and at a fine one: under 1 % of tissue flagged as ink."""
    params = TissueParams(mask_mpp=mask_mpp)
    ds = mask_mpp / 0.25
    h, w = int(LAYOUT.height / ds), int(LAYOUT.width / ds)
    thumbs = {"ihc": LAYOUT.render(0, 0, w, h, ds)}
    case = random_case(2048, 1536, positive=True, stains=("HE", "ER", "HER2"), rng=rng)
    ds = mask_mpp / 0.5  # multistain slides are 0.5 µm/px
    for stain in ("HE", "ER", "HER2"):
        thumbs[stain] = StainedSection(case, stain).render(0, 0, int(2048 / ds), int(1536 / ds), ds)
    for name, thumb in thumbs.items():
        found = find_tissue(thumb, params)
        assert found.mask.mean() > 0.2, name
        assert found.pen_fraction < 0.01, (name, found.pen_fraction)


def test_off_switch_gives_the_old_mask_and_bad_colours_are_refused():
    ds = MASK_MPP / MPP
    thumb = INKED.render(0, 0, int(INKED.width / ds), int(INKED.height / ds), ds)
    off = find_tissue(thumb, TissueParams(pen_ink=()))
    on = find_tissue(thumb, TissueParams())
    assert not off.ink.any() and off.pen_fraction == 0.0
    assert on.ink.any() and (off.mask & on.ink).sum() > 0.8 * on.ink.sum()  # without it, ink is tissue
    with pytest.raises(ValueError, match="unknown pen ink colour"):
        TissueParams(pen_ink=("purple",))


PRE_INK_TISSUE_FIELDS = {  # what medssl recorded before ink detection existed
    "mask_mpp", "saturation_threshold", "min_saturation", "max_brightness",
    "blur_px", "close_px", "fill_holes", "min_area_um2",
}  # fmt: skip


def test_ink_off_records_the_pre_ink_params_and_a_change_is_refused(inked_caches, capsys):
    on, off = inked_caches
    recorded = {
        name: stored_params(cache.path, "slides")["tiling"]["tissue"] for name, cache in (("on", on), ("off", off))
    }
    # caches tiled before ink detection hold exactly these, so `--pen-ink off` resumes them
    assert set(recorded["off"]) == PRE_INK_TISSUE_FIELDS
    assert set(recorded["on"]) > PRE_INK_TISSUE_FIELDS and recorded["on"]["pen_ink"] == ["green", "blue", "black"]
    slide = str(on.path.parent.parent / "inked.tiff")
    assert (
        cli(["tile", slide, "--out", str(off.path.parent), "--mpp", "8", "--tile-size", "16", "--min-tissue", "0.75"])
        != 0
    )
    assert "pen_ink" in capsys.readouterr().err
