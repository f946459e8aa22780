"""Views that remember their geometry: every pixel (2D) or voxel (3D) of a view maps back to where it came from."""

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
    sample_box,
)
from medssl.geometry import cell_centres, fields, geometry_size, make_geometry, nearest_cells


def ramp(h: int = 48, w: int = 64) -> torch.Tensor:
    """A 3-channel image whose pixels hold their own normalised centre (y, x) and a constant."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x, torch.full_like(y, 0.5)])


@pytest.mark.parametrize("flip, rot", [(False, 0), (True, 0), (False, 1), (True, 3)])
def test_every_view_pixel_maps_back_to_its_source(flip, rot):
    image = ramp()
    geometry = make_geometry((8, 12), (32, 32), (48, 64), flip=flip, rot=rot)
    view = render_view(image, geometry, 32)  # crop size = view size: pixels are copied, not resampled
    centres = cell_centres(geometry[None], (32, 32))[0]  # [32*32, 2] (y, x) in the original
    torch.testing.assert_close(view[:2].flatten(1).T, centres, atol=1e-6, rtol=0)


def test_zoomed_views_map_back_up_to_interpolation():
    image = ramp()
    geometry = make_geometry((4, 20), (24, 30), (48, 64), flip=True, rot=0)
    view = render_view(image, geometry, 16)
    centres = cell_centres(geometry[None], (16, 16))[0]
    error = (view[:2].flatten(1).T - centres).abs()
    assert float(error[:, 0].max()) < 0.02 and float(error[:, 1].max()) < 0.02  # area-resampled linear ramp


def test_nearest_cells_identity_mirror_and_zoom():
    whole = make_geometry((0, 0), (48, 64), (48, 64), flip=False, rot=0)[None]
    mirrored = make_geometry((0, 0), (48, 64), (48, 64), flip=True, rot=0)[None]
    grid = (4, 4)
    index, distance = nearest_cells(cell_centres(whole, grid), cell_centres(whole, grid))
    assert torch.equal(index[0], torch.arange(16)) and float(distance.max()) == 0.0
    index, _ = nearest_cells(cell_centres(whole, grid), cell_centres(mirrored, grid))
    mirror = torch.arange(16).reshape(4, 4).flip(-1).flatten()
    assert torch.equal(index[0], mirror)
    zoomed = make_geometry((12, 16), (24, 32), (48, 64), flip=False, rot=0)[None]  # the centre quarter
    index, _ = nearest_cells(cell_centres(zoomed, grid), cell_centres(whole, grid))
    assert set(index[0].tolist()) == {5, 6, 9, 10}  # every zoomed cell lands in the four central cells


@pytest.mark.parametrize("channels, view", [(3, histology_geometric_view(16)), (1, radiology_geometric_view(16))])
def test_geometric_pairs_collate_for_grey_and_rgb(channels, view):
    pair = GeometricViewsd.pair(view)
    torch.manual_seed(0)
    image = torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8) if channels == 3 else torch.rand(1, 40, 40)
    batch = default_collate([pair({"image": image, "label": 1}) for _ in range(4)])
    assert [v.shape for v in batch["views"]] == [(4, channels, 16, 16)] * 2
    assert [g.shape for g in batch["geometry"]] == [(4, geometry_size(2))] * 2
    assert not torch.equal(batch["geometry"][0], batch["geometry"][1])  # two different crops


def test_rotation_needs_a_square_view():
    with pytest.raises(ValueError, match="square"):
        RandGeometricViewd((16, 24), rotate=True)


def test_2d_draws_are_unchanged():
    """The crop boxes, flips and rotations a seed gave before views became n-D (and the generator state
    after them), so seeded runs and resumed runs see the same 2D views."""
    view = RandGeometricViewd(12, scale=(0.1, 1.0), flip_prob=0.3, rotate=True)
    torch.manual_seed(7)
    drawn = []
    for _ in range(6):
        f = fields(view.draw_geometry(50, 70))
        box = [round(float(x) * d) for x, d in zip([*f.start, *f.size], [50, 70, 50, 70], strict=True)]
        drawn.append([*box, int(f.flip[1]), int(f.rot)])
        assert int(f.flip[0]) == 0
    assert drawn == [
        [1, 26, 49, 41, 1, 3],
        [10, 7, 30, 33, 0, 3],
        [2, 0, 39, 33, 0, 0],
        [0, 0, 49, 55, 0, 3],
        [1, 14, 47, 49, 0, 3],
        [3, 21, 43, 36, 1, 2],
    ]
    assert float(torch.rand(())) == pytest.approx(0.9575381278991699, abs=0)


# --- 3D volumes [C, D, H, W] ---------------------------------------------------------------------------

SHAPE_3D = (20, 24, 28)


def ramp_3d(d: int = SHAPE_3D[0], h: int = SHAPE_3D[1], w: int = SHAPE_3D[2]) -> torch.Tensor:
    """A 3-channel volume whose voxels hold their own normalised centre (z, y, x)."""
    axes = [(torch.arange(n) + 0.5) / n for n in (d, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


@pytest.mark.parametrize(
    "flip, rot",
    [
        ((False, False, False), 0),
        ((True, False, False), 0),
        ((False, True, False), 0),
        ((False, False, True), 1),
        ((True, True, False), 2),
        ((True, False, True), 3),
        ((True, True, True), 1),
    ],
)
def test_every_view_voxel_maps_back_to_its_source(flip, rot):
    volume = ramp_3d()
    geometry = make_geometry((3, 5, 7), (12, 16, 16), SHAPE_3D, flip=flip, rot=rot)
    view = render_view(volume, geometry, (12, 16, 16))  # crop size = view size: voxels are copied
    assert view.shape == (3, 12, 16, 16)
    centres = cell_centres(geometry[None], (12, 16, 16))[0]  # [12*16*16, 3] (z, y, x) in the original
    torch.testing.assert_close(view.flatten(1).T, centres, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(10, 9, 9), (24, 20, 20), (6, 32, 32)])
def test_resampled_view_voxels_map_back_within_half_a_voxel(size):
    """Shrunk along some axes and stretched along others (trilinear, antialiased when shrinking):
    every voxel shows its mapped-back place up to interpolation, under per-axis flips and rotation."""
    volume = ramp_3d()
    geometry = make_geometry((3, 5, 7), (15, 13, 19), SHAPE_3D, flip=(True, False, True), rot=1)
    view = render_view(volume, geometry, size)
    assert view.shape == (3, *size)
    error = (view.flatten(1).T - cell_centres(geometry[None], size)[0]).abs().amax(0)
    half_voxel = 0.5 / torch.tensor(SHAPE_3D, dtype=torch.float32)
    assert bool((error < half_voxel).all()), (error, half_voxel)


def test_random_3d_views_map_back_and_collate():
    """Seeded random views of a volume (crop box, a flip probability per axis, axial rot90): each view
    maps back to its source, and the records collate to [B, 13]."""
    view = RandGeometricViewd((8, 12, 12), scale=(0.2, 1.0), flip_prob=(0.5, 0.5, 0.5), rotate=True)
    pair = GeometricViewsd.pair(view)
    volume = ramp_3d()
    torch.manual_seed(0)
    batch = default_collate([pair({"image": volume, "label": 1}) for _ in range(12)])
    assert [v.shape for v in batch["views"]] == [(12, 3, 8, 12, 12)] * 2
    geometry = torch.cat(batch["geometry"])
    assert geometry.shape == (24, geometry_size(3))
    f = fields(geometry)
    assert bool((f.start >= 0).all() and (f.start + f.size <= 1 + 1e-6).all())
    assert {int(k) for k in f.rot[:, 0]} == {0, 1, 2, 3}
    assert bool((f.flip.sum(0) > 0).all())  # every axis flipped sometimes
    views = torch.cat(batch["views"])
    error = (views.flatten(2).transpose(1, 2) - cell_centres(geometry, (8, 12, 12))).abs().amax((0, 1))
    assert bool((error < 0.5 / torch.tensor(SHAPE_3D, dtype=torch.float32)).all()), error


def test_3d_crop_boxes_follow_scale_and_ratio():
    torch.manual_seed(0)
    shape = (40, 50, 60)
    for _ in range(200):
        start, size = sample_box(shape, scale=(0.2, 0.6), ratio=(3 / 4, 4 / 3))
        assert all(0 <= s and s + c <= d for s, c, d in zip(start, size, shape, strict=True))
        fraction = (size[0] * size[1] * size[2]) / (40 * 50 * 60)
        assert 0.2 * 0.9 < fraction < 0.6 * 1.1  # up to rounding of the sides
        assert max(size) / min(size) < 4 / 3 * 1.1


def test_3d_nearest_cells_pair_cells_that_show_the_same_place():
    """Two overlapping random 3D views of the coordinate volume, cells pooled 4 × 4 × 4: the nearest cell
    of view t to each cell of view s inside t's box holds (nearly) the same original place."""
    volume = ramp_3d(32, 32, 32)
    view = RandGeometricViewd(16, scale=(0.3, 0.6), flip_prob=(0.5, 0.5, 0.5), rotate=True)
    torch.manual_seed(3)
    checked = 0
    for _ in range(10):
        gs, gt = view.draw_geometry(32, 32, 32), view.draw_geometry(32, 32, 32)
        pooled = [torch.nn.functional.avg_pool3d(render_view(volume, g, 16)[None], 4)[0].flatten(1).T for g in (gs, gt)]
        index, distance = nearest_cells(cell_centres(gs[None], (4, 4, 4)), cell_centres(gt[None], (4, 4, 4)))
        inside = distance[0] < 0.5 * float(fields(gt).size.min()) / 4  # within half a cell of t: t covers it
        paired = pooled[1][index[0]]
        error = (paired - pooled[0]).norm(dim=-1)[inside]
        cell_t = (fields(gt).size / 4).norm()  # a t cell's diagonal, normalised
        assert bool((error <= cell_t).all()), (error.max(), cell_t)
        # and the pairing beats any other cell of t: the paired one is the nearest in content too
        content_nearest = torch.cdist(pooled[0].double(), pooled[1].double()).argmin(-1)
        assert torch.equal(content_nearest[inside], index[0][inside])
        checked += int(inside.sum())
    assert checked > 50


def test_3d_sizes_rotation_and_flip_probabilities_are_checked():
    with pytest.raises(ValueError, match="square"):
        RandGeometricViewd((8, 16, 24), rotate=True)
    RandGeometricViewd((8, 16, 16), rotate=True)  # square axial plane: fine
    with pytest.raises(ValueError, match="one probability per axis"):
        RandGeometricViewd((8, 16, 16), flip_prob=(0.5, 0.5))
    with pytest.raises(ValueError, match="3-D view size"):
        RandGeometricViewd((8, 16, 16))({"image": torch.rand(1, 32, 32)})
    with pytest.raises(ValueError, match="2-D geometry"):
        render_view(ramp_3d(), make_geometry((0, 0), (4, 4), (20, 24)), 4)
