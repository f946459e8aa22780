"""Shared fixtures: small pyramidal slides written with tifffile from real IHC pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide
from tests.layouts import LAYOUT

@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    """A folder of good slides: generic TIFF at 0.25 µm/px and Aperio SVS at 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "generic-025.tiff", LAYOUT, mpp=0.25, downsamples=(1, 4, 16))
    half = SlideLayout(
        width=2048, height=1536,
        tissue=[Ellipse(e.cx / 2, e.cy / 2, e.rx / 2, e.ry / 2) for e in LAYOUT.tissue],
        texture_zoom=0.5,
    )
    write_slide(folder / "aperio-050.svs", half, mpp=0.5, downsamples=(1, 4), vendor="aperio")
    return folder


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory, slides_dir) -> Path:
    """Bad inputs beside one good slide: not a slide, truncated, blank glass, no MPP."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.tiff").write_text("this is not a slide\n")
    good = (slides_dir / "generic-025.tiff").read_bytes()
    (folder / "truncated.tiff").write_bytes(good[: len(good) // 3])
    (folder / "cut-short.tiff").write_bytes(good[: len(good) * 9 // 10])
    write_slide(folder / "blank.tiff", SlideLayout(2048, 2048), mpp=0.25, downsamples=(1, 4))
    write_slide(folder / "no-mpp.tiff", LAYOUT, mpp=None, downsamples=(1, 4, 16))
    (folder / "good.tiff").write_bytes(good)
    return folder


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
