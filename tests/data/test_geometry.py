"""Views that remember their geometry: every pixel of a view maps back to where it came from."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from medssl.data.geometric_views import (
    GeometricViewsd,
    RandGeometricViewd,
    histology_geometric_view,
    radiology_geometric_view,
    render_view,
)
from medssl.geometry import cell_centres, make_geometry, nearest_cells


def ramp(h: int = 48, w: int = 64) -> torch.Tensor:
    """A 3-channel image whose pixels hold their own normalised centre (y, x) and a constant."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x, torch.full_like(y, 0.5)])


@pytest.mark.parametrize("flip, rot", [(False, 0), (True, 0), (False, 1), (True, 3)])
def test_every_view_pixel_maps_back_to_its_source(flip, rot):
    image = ramp()
    geometry = make_geometry(top=8, left=12, crop_h=32, crop_w=32, flip=flip, rot=rot, h=48, w=64)
    view = render_view(image, geometry, 32)  # crop size = view size: pixels are copied, not resampled
    centres = cell_centres(geometry[None], (32, 32))[0]  # [32*32, 2] (y, x) in the original
    torch.testing.assert_close(view[:2].flatten(1).T, centres, atol=1e-6, rtol=0)


def test_zoomed_views_map_back_up_to_interpolation():
    image = ramp()
    geometry = make_geometry(top=4, left=20, crop_h=24, crop_w=30, flip=True, rot=0, h=48, w=64)
    view = render_view(image, geometry, 16)
    centres = cell_centres(geometry[None], (16, 16))[0]
    error = (view[:2].flatten(1).T - centres).abs()
    assert float(error[:, 0].max()) < 0.02 and float(error[:, 1].max()) < 0.02  # area-resampled linear ramp


def test_nearest_cells_identity_mirror_and_zoom():
    whole = make_geometry(0, 0, 48, 64, flip=False, rot=0, h=48, w=64)[None]
    mirrored = make_geometry(0, 0, 48, 64, flip=True, rot=0, h=48, w=64)[None]
    grid = (4, 4)
    index, distance = nearest_cells(cell_centres(whole, grid), cell_centres(whole, grid))
    assert torch.equal(index[0], torch.arange(16)) and float(distance.max()) == 0.0
    index, _ = nearest_cells(cell_centres(whole, grid), cell_centres(mirrored, grid))
    mirror = torch.arange(16).reshape(4, 4).flip(-1).flatten()
    assert torch.equal(index[0], mirror)
    zoomed = make_geometry(12, 16, 24, 32, flip=False, rot=0, h=48, w=64)[None]  # the centre quarter
    index, _ = nearest_cells(cell_centres(zoomed, grid), cell_centres(whole, grid))
    assert set(index[0].tolist()) == {5, 6, 9, 10}  # every zoomed cell lands in the four central cells


@pytest.mark.parametrize("channels, view", [(3, histology_geometric_view(16)), (1, radiology_geometric_view(16))])
def test_geometric_pairs_collate_for_grey_and_rgb(channels, view):
    pair = GeometricViewsd.pair(view)
    torch.manual_seed(0)
    image = torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8) if channels == 3 else torch.rand(1, 40, 40)
    batch = default_collate([pair({"image": image, "label": 1}) for _ in range(4)])
    assert [v.shape for v in batch["views"]] == [(4, channels, 16, 16)] * 2
    assert [g.shape for g in batch["geometry"]] == [(4, 8)] * 2
    assert not torch.equal(batch["geometry"][0], batch["geometry"][1])  # two different crops


def test_rotation_needs_a_square_view():
    with pytest.raises(ValueError, match="square"):
        RandGeometricViewd((16, 24), rotate=True)
