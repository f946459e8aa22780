"""medssl.geometry, the pure maths: records, view ↔ original maps, cell centres and nearest cells in 2D
and 3D, checked against views made by plain torch slicing, ``flip`` and ``rot90`` (no resampling)."""

from __future__ import annotations

import itertools

import pytest
import torch

from medssl.geometry import (
    FLIP,
    GEOMETRY_SIZE,
    HEIGHT,
    ORIG_H,
    ORIG_W,
    ROT,
    TOP,
    WIDTH,
    cell_centres,
    fields,
    gather_cells,
    geometry_ndim,
    geometry_size,
    grid_centres,
    make_geometry,
    nearest_cells,
    original_to_view,
    view_to_original,
)


def coordinates(*shape: int) -> torch.Tensor:
    """``[n, *shape]``: every pixel/voxel holds its own normalised centre (z, y, x)."""
    axes = [(torch.arange(d, dtype=torch.float64) + 0.5) / d for d in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def by_hand(image: torch.Tensor, start, size, flip, rot) -> torch.Tensor:
    """The view ``image[:, crop].flip(flipped axes).rot90(rot, last two axes)``, with plain torch."""
    box = tuple(slice(s, s + c) for s, c in zip(start, size, strict=True))
    view = image[(slice(None), *box)]
    axes = [1 + a for a, f in enumerate(flip) if f]
    if axes:
        view = view.flip(axes)
    return torch.rot90(view, rot, dims=(-2, -1))


def test_records_have_4n_plus_1_numbers_and_the_2d_names_index_them():
    g = make_geometry((8, 12), (32, 16), (48, 64), flip=True, rot=7)
    assert g.dtype == torch.float32 and g.shape == (GEOMETRY_SIZE,) == (geometry_size(2),)
    expected = torch.tensor([8 / 48, 12 / 64, 32 / 48, 16 / 64, 0.0, 1.0, 3.0, 48.0, 64.0])
    assert torch.equal(g, expected)
    named = (g[TOP], g[HEIGHT], g[WIDTH], g[FLIP], g[ROT], g[ORIG_H], g[ORIG_W])
    assert named == tuple(expected[[0, 2, 3, 5, 6, 7, 8]])
    g3 = make_geometry((1, 2, 3), (4, 5, 6), (10, 20, 30), flip=(True, False, True), rot=2)
    assert g3.shape == (13,) == (geometry_size(3),) and geometry_ndim(g3[None].expand(4, -1)) == 3
    f = fields(g3)
    assert torch.equal(f.start, torch.tensor([0.1, 0.1, 0.1])) and torch.equal(f.size, torch.tensor([0.4, 0.25, 0.2]))
    assert f.flip.tolist() == [1.0, 0.0, 1.0] and f.rot.tolist() == [2.0] and f.shape.tolist() == [10.0, 20.0, 30.0]
    left_right = make_geometry((0, 0, 0), (1, 1, 1), (2, 2, 2), flip=True)
    assert fields(left_right).flip.tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="4n"):
        geometry_ndim(torch.zeros(8))
    with pytest.raises(ValueError, match="one entry per axis"):
        make_geometry((0, 0), (1, 1), (2, 2), flip=(True, False, True))


def test_2d_maps_are_the_ones_lvm_med_used():
    """Hand-worked 2D values: a whole-image view rotated once shows at (y, x) the original point
    (x, 1 - y); mirrored first, (x, y); a crop scales and shifts."""
    whole = make_geometry((0, 0), (48, 64), (48, 64), flip=False, rot=1)[None]
    point = torch.tensor([[[0.1, 0.2]]])
    torch.testing.assert_close(view_to_original(point, whole), torch.tensor([[[0.2, 0.9]]]))
    mirrored = make_geometry((0, 0), (48, 64), (48, 64), flip=True, rot=1)[None]
    torch.testing.assert_close(view_to_original(point, mirrored), torch.tensor([[[0.2, 0.1]]]))
    crop = make_geometry((12, 16), (24, 32), (48, 64), flip=False, rot=0)[None]
    torch.testing.assert_close(view_to_original(point, crop), torch.tensor([[[0.25 + 0.05, 0.25 + 0.1]]]))
    torch.testing.assert_close(
        cell_centres(crop, (2, 2), in_pixels=True)[0],
        torch.tensor([[18.0, 24.0], [18.0, 40.0], [30.0, 24.0], [30.0, 40.0]]),
    )


FLIPS_2D, FLIPS_3D = itertools.product([False, True], repeat=2), itertools.product([False, True], repeat=3)
CASES_2D = [((8, 12), (32, 40), flip, rot) for flip in FLIPS_2D for rot in range(4)]
CASES_3D = [((3, 5, 7), (12, 16, 20), flip, rot) for flip in FLIPS_3D for rot in range(4)]


@pytest.mark.parametrize("start, size, flip, rot", CASES_2D + CASES_3D)
def test_every_cell_centre_is_the_original_place_its_view_shows(start, size, flip, rot):
    """A view made by torch slicing/flip/rot90 of an image of its own coordinates: each view pixel/voxel
    (a cell of a full-resolution grid) maps back to the coordinate it holds. A swapped axis, a flip
    undone after instead of before the rotation, or a rotation of the wrong plane fails this."""
    shape = (48, 64) if len(start) == 2 else (20, 24, 28)
    view = by_hand(coordinates(*shape), start, size, flip, rot)
    geometry = make_geometry(start, size, shape, flip, rot)[None]
    centres = cell_centres(geometry, tuple(view.shape[1:]))[0].double()
    torch.testing.assert_close(centres, view.flatten(1).T, atol=1e-6, rtol=0)
    # and back: original places → view coordinates are the view's own pixel centres
    back = original_to_view(centres[None], geometry)[0]
    torch.testing.assert_close(back, grid_centres(tuple(view.shape[1:]), dtype=torch.float64), atol=1e-6, rtol=0)


def test_in_pixels_scales_each_axis_by_its_original_size():
    geometry = make_geometry((2, 4, 6), (10, 10, 10), (20, 40, 80), flip=(True, False, False), rot=1)[None]
    normalised, pixels = cell_centres(geometry, (2, 3, 3)), cell_centres(geometry, (2, 3, 3), in_pixels=True)
    torch.testing.assert_close(pixels, normalised * torch.tensor([20.0, 40.0, 80.0]))


def test_grids_are_row_major_like_flatten_and_gather_cells_follows_them():
    grid = (3, 4, 5)
    features = coordinates(*grid).float()[None]  # [1, 3, 3, 4, 5]: each cell holds its centre
    torch.testing.assert_close(grid_centres(grid), features[0].flatten(1).T)
    index = torch.tensor([[0, 7, 59, 23]])
    torch.testing.assert_close(gather_cells(features, index)[0], grid_centres(grid)[index[0]])
    features_2d = coordinates(4, 6).float()[None]
    torch.testing.assert_close(gather_cells(features_2d, torch.tensor([[5, 23]]))[0], grid_centres((4, 6))[[5, 23]])
    with pytest.raises(ValueError, match="grid"):
        cell_centres(make_geometry((0, 0), (4, 4), (4, 4))[None], (2, 2, 2))


def test_nearest_cells_pair_the_cells_of_overlapping_3d_views_that_show_the_same_place():
    """Two crops of a 32³ volume, overlapping in a 16 × 12 × 16 block on the same 4-voxel cell lattice,
    the second mirrored in z and x and rotated: every cell of the first that lies in the overlap is
    paired (distance 0) with the cell of the second whose torch-made view holds the same voxels."""
    shape, grid = (32, 32, 32), (4, 4, 4)
    s = dict(start=(0, 4, 0), size=(16, 16, 16), flip=(False, False, False), rot=0)
    t = dict(start=(0, 8, 0), size=(16, 16, 16), flip=(True, False, True), rot=3)
    labels = torch.arange(32**3, dtype=torch.float64).reshape(1, *shape)  # every voxel its own label
    cells = {}
    for name, v in (("s", s), ("t", t)):
        view = by_hand(labels, v["start"], v["size"], v["flip"], v["rot"])[0]
        blocks = view.reshape(4, 4, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(64, 64)  # cell → its voxels
        cells[name] = [frozenset(b.tolist()) for b in blocks]
    gs = make_geometry(s["start"], s["size"], shape, s["flip"], s["rot"])[None]
    gt = make_geometry(t["start"], t["size"], shape, t["flip"], t["rot"])[None]
    index, distance = nearest_cells(cell_centres(gs, grid), cell_centres(gt, grid))
    shared = [p for p in range(64) if cells["s"][p] in cells["t"]]
    assert len(shared) == 4 * 3 * 4  # the overlap: 4 × 3 × 4 cells
    for p in shared:
        assert cells["t"][int(index[0, p])] == cells["s"][p] and float(distance[0, p]) < 1e-6
    outside = [p for p in range(64) if p not in shared]
    assert all(float(distance[0, p]) > 0.1 for p in outside)  # a whole cell (4/32) away from t's box


def test_nearest_cells_broadcast_over_pairs_of_images_and_tie_break_low():
    whole = make_geometry((0, 0, 0), (8, 8, 8), (8, 8, 8))[None]
    centres = cell_centres(whole, (2, 2, 2))
    index, distance = nearest_cells(centres[:, None], centres[None])
    assert index.shape == (1, 1, 8) and torch.equal(index[0, 0], torch.arange(8)) and float(distance.max()) == 0.0
    ties = torch.tensor([[[0.5, 0.5, 0.5]]]), torch.tensor([[[0.25, 0.5, 0.5], [0.75, 0.5, 0.5]]])
    assert int(nearest_cells(*ties)[0]) == 0
