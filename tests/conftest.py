"""Shared fixtures: small pyramidal slides written with tifffile from real IHC pixels; the demo at its smallest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medssl.preprocess import TilingParams, VolumeParams, cache_volumes, tile_slides
from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide
from medssl.synthetic.volumes import grid_affine, nibabel_data, sphere, write_nifti
from tests.layouts import LAYOUT


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    """A folder of good slides: generic TIFF at 0.25 µm/px and Aperio SVS at 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "generic-025.tiff", LAYOUT, mpp=0.25, downsamples=(1, 4, 16))
    half = SlideLayout(
        width=2048,
        height=1536,
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


@pytest.fixture(scope="session")
def volume_cache(tmp_path_factory) -> Path:
    """A sphere phantom (train, with its label) and nibabel's real anatomical MRI (val), at 2 mm."""
    folder = tmp_path_factory.mktemp("volumes")
    affine = grid_affine((2.0, 2.0, 2.0), origin=(-40.0, -40.0, -30.0))
    image, label = sphere((40, 40, 30), affine, (0.0, 0.0, 0.0), 12.0, body_radius_mm=35.0)
    write_nifti(folder / "ball.nii.gz", image, affine)
    write_nifti(folder / "ball_seg.nii.gz", label, affine)
    (folder / "cohort.csv").write_text(
        "volume_id,image,label,modality,split\n"
        "ball,ball.nii.gz,ball_seg.nii.gz,MR,train\n"
        f"anat,{nibabel_data('anatomical.nii')},,MR,val\n"
    )
    summary = cache_volumes(
        [folder / "cohort.csv"], folder / "cache", VolumeParams(spacing=(2.0, 2.0, 2.0)), progress=False
    )
    assert not summary.failed
    return folder / "cache"


def tile_cohort(folder: Path, csv_text: str, tile_size: int) -> Path:
    """Tile the slides a CSV lists (at 1 µm/px) into ``folder/cache``."""
    (folder / "cohort.csv").write_text(csv_text)
    tile_slides(
        [folder / "cohort.csv"], folder / "cache", TilingParams(target_mpp=1.0, tile_size=tile_size), progress=False
    )
    return folder / "cache"


@pytest.fixture(scope="session")
def split_cache(slides_dir, tmp_path_factory) -> Path:
    """64-px tiles of three slides with labels and splits: one train, two val."""
    generic, aperio = slides_dir / "generic-025.tiff", slides_dir / "aperio-050.svs"
    rows = f"slide_id,path,label,split\na,{generic},tumor,train\nb,{aperio},normal,val\nc,{generic},tumor,val\n"
    return tile_cohort(tmp_path_factory.mktemp("fit"), rows, 64)


@pytest.fixture(scope="session")
def cohort_cache(slides_dir, tmp_path_factory) -> Path:
    """32-px tiles of three slides: case 1 in two stains (train), case 2 in one (val)."""
    generic, aperio = slides_dir / "generic-025.tiff", slides_dir / "aperio-050.svs"
    rows = (
        "slide_id,path,label,split,stain,case_id\n"
        f"c1-he,{generic},tumor,train,HE,case-1\nc1-ihc,{aperio},tumor,train,IHC,case-1\n"
        f"c2-he,{aperio},normal,val,HE,case-2\n"
    )
    return tile_cohort(tmp_path_factory.mktemp("cohort"), rows, 32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def lesion_cohort(tmp_path_factory) -> dict:
    """A weakly labelled cohort from real pixels (IHC tissue, retina-texture lesions in positive slides),
    tiled at 1 µm/px into 32-px tiles and embedded with a random-init ResNet-18 (width 0.5)."""
    import torch

    from medssl.export.embeddings import embed_cache
    from medssl.nn.backbones import build_encoder
    from medssl.synthetic.slides import write_lesion_cohort

    folder = tmp_path_factory.mktemp("lesion-cohort")
    manifest = write_lesion_cohort(folder / "slides", n_slides=16, seed=0)
    summary = tile_slides([manifest], folder / "cache", TilingParams(target_mpp=1.0, tile_size=32), progress=False)
    assert not summary.failed
    torch.manual_seed(0)
    encoder = build_encoder(name="resnet18", in_channels=3, width=0.5)
    embed_cache(encoder, folder / "cache", folder / "embeddings", batch_size=512, progress=False)
    return {
        "cache": folder / "cache",
        "features": folder / "embeddings",
        "masks": folder / "slides" / "masks",
        "in_dim": encoder.out_dim,
        "positive_class": "positive",  # write_lesion_cohort's labels: positive / negative
    }


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """``pipelines/demo.py --tiny``: every step of the demo at its smallest, in a subprocess (the demo seeds and
    configures torch globally), given a relative ``--out`` as a user gives it (the notebooks run from elsewhere)."""
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "pipelines" / "demo.py"),
            "--out",
            out.name,
            "--tiny",
        ],
        capture_output=True,
        text=True,
        cwd=out.parent,
    )
    assert done.returncode == 0, f"the demo failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return out
