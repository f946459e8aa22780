"""Correspondence mining for Alice: exact voxel correspondences between two augmented crops of one
volume, and body-coordinate matching across two "patients" whose true deformation is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medssl.data.correspondence import BodyCoordinateSampler, SameVolumeSampler, body_box, crop_padded

SHAPE = (20, 26, 24)

# Patient B = patient A under a known per-axis scale and shift: voxel p of A is voxel SCALE * p + SHIFT of B
SCALE = np.array([1.15, 0.8, 1.2])
SHIFT = np.array([1.5, 3.0, -1.0])
SHAPE_B = (48, 44, 56)
#: body-coordinate mapping error allowed under that map, in voxels of B (per axis): the body boxes are
#: found to the voxel in each volume, so each edge is off by < 1 voxel and the map by under a voxel (measured: 0.73)
TOLERANCE = 1.0


def distinct_volume(seed: int = 0) -> torch.Tensor:
    """``[1, *SHAPE]`` whose voxels all hold different values, so a matching value proves a matching voxel."""
    n = int(np.prod(SHAPE))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float().reshape(1, *SHAPE) + 1


def at(view: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of ``view [1, D, H, W]`` at the voxels of ``points [K, 3]`` (rounded)."""
    index = points.round().long()
    return view[0, index[:, 0], index[:, 1], index[:, 2]]


def body_phantom() -> np.ndarray:
    """A ``[40, 48, 48]`` ellipsoidal body (value >= 1, air 0) with smooth inner structure."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (40, 48, 48)], indexing="ij")
    body = ((z - 20) / 14) ** 2 + ((y - 24) / 16) ** 2 + ((x - 24) / 18) ** 2 <= 1
    inner = 1.5 + 0.5 * np.sin(z / 3.0) * np.cos(y / 4.0) + 0.3 * np.sin(x / 2.5)
    return (body * inner).astype(np.float32)


def scaled_and_shifted(volume: np.ndarray) -> np.ndarray:
    """B(q) = A((q - SHIFT) / SCALE), linear interpolation."""
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = np.diag(1 / SCALE), -SHIFT / SCALE  # output voxel -> input voxel
    return ndimage.affine_transform(volume, matrix, output_shape=SHAPE_B, order=1)


def mapping_errors(sampler, volume_a, volume_b, truth, draws: int = 10) -> np.ndarray:
    """``|predicted - true|`` ``[draws * K, 3]`` in voxels of B for the sampler's points, where ``truth``
    maps A's voxel coordinates ``[K, 3]`` to B's."""
    errors = []
    for seed in range(draws):
        out = sampler.pair(volume_a, volume_b, np.random.default_rng(seed))
        source_a = out["start_a"].numpy() + out["points_a"].double().numpy()
        predicted = out["start_b"].numpy() + out["points_b"].double().numpy()
        errors.append(np.abs(predicted - truth(source_a)))
    return np.concatenate(errors)


def test_same_volume_crops_show_the_same_voxel_at_corresponding_points():
    volume = distinct_volume()
    sampler = SameVolumeSampler(crop_size=(12, 10, 10), points=32, max_shift=4)
    rotations, flips = set(), set()
    for seed in range(20):
        out = sampler.pair(volume, None, np.random.default_rng(seed))
        assert out["view_a"].shape == out["view_b"].shape == (1, 12, 10, 10)
        assert out["points_a"].shape == out["points_b"].shape == (32, 3)
        for name in ("a", "b"):
            points = out[f"points_{name}"]
            assert torch.equal(points, points.round())  # flips and rot90 keep voxels whole
            assert points.min() >= 0 and (points <= torch.tensor([11, 9, 9])).all()
        # the points are real voxels of the volume (not padding), and both crops show that voxel
        source = out["points_source"].long()
        truth = volume[0, source[:, 0], source[:, 1], source[:, 2]]
        assert torch.equal(at(out["view_a"], out["points_a"]), truth)
        assert torch.equal(at(out["view_b"], out["points_b"]), truth)
        geometry = out["geometry_a"]
        rotations.add(int(geometry[9]))
        flips.add(tuple(int(f) for f in geometry[6:9]))
    assert rotations == {0, 1, 2, 3} and len(flips) >= 6  # the augmentations were exercised


def test_same_volume_crops_overlap_near_borders_with_zero_padding():
    volume = distinct_volume()
    sampler = SameVolumeSampler(crop_size=16, points=8, max_shift=7, flip_prob=0.0, rotate=False)
    shapes = torch.tensor(SHAPE, dtype=torch.float32)
    for seed in range(20):
        out = sampler.pair(volume, None, np.random.default_rng(seed))
        starts = [out[f"geometry_{n}"][:3] * shapes for n in "ab"]
        centres = [s.round() + 8 for s in starts]
        assert (centres[0] - centres[1]).abs().max() <= 7
        # the crops are 16^3 but the volume only 20 x 26 x 24: padded zeros, never a value of the volume
        assert (out["view_a"] == 0).any() or (out["view_b"] == 0).any()
        assert torch.equal(at(out["view_a"], out["points_a"]), at(out["view_b"], out["points_b"]))


def test_same_volume_pairs_are_reproducible_from_the_seed():
    volume = distinct_volume()
    sampler = SameVolumeSampler(crop_size=8, points=16)
    first, again = (sampler.pair(volume, None, np.random.default_rng(3)) for _ in range(2))
    other = sampler.pair(volume, None, np.random.default_rng(4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["view_a"], other["view_a"]) and not torch.equal(first["points_a"], other["points_a"])


def test_same_volume_centres_stay_in_the_body_box_and_refuse_a_shift_without_overlap():
    volume = torch.zeros(1, *SHAPE)
    volume[0, 5:9, 10:14, 3:6] = 1.0
    sampler = SameVolumeSampler(crop_size=6, points=4, max_shift=0, threshold=0.5, flip_prob=0.0, rotate=False)
    for seed in range(10):
        out = sampler.pair(volume, None, np.random.default_rng(seed))
        assert out["view_a"][0, 3, 3, 3] == 1.0  # the crop centre (size // 2) is a body voxel
    with pytest.raises(ValueError, match="max_shift"):
        SameVolumeSampler(crop_size=8, max_shift=4)


def test_crop_padded_and_body_box_against_hand_computed_values():
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    crop = crop_padded(volume, (-1, 1, 2), (3, 2, 3))
    expected = np.zeros((3, 2, 3), dtype=np.float32)
    expected[1:3, 0:2, 0:2] = volume[:, 1:3, 2:4]
    assert torch.equal(crop[0], torch.from_numpy(expected))
    body = np.zeros((10, 12, 14), dtype=np.float32)
    body[2:7, 3:5, 4:12] = 5.0
    low, high = body_box(body)
    assert low.tolist() == [2, 3, 4] and high.tolist() == [6, 4, 11]


def test_body_coordinates_find_the_true_point_under_a_known_scale_and_shift():
    volume_a = body_phantom()
    volume_b = scaled_and_shifted(volume_a)
    sampler = BodyCoordinateSampler(crop_size=16, points=32, threshold=0.5)
    errors = mapping_errors(sampler, volume_a, volume_b, lambda p: SCALE * p + SHIFT)
    assert errors.max() < TOLERANCE, errors.max(axis=0)
    out = sampler.pair(volume_a, volume_b, np.random.default_rng(0))
    assert out["view_a"].shape == out["view_b"].shape == (1, 16, 16, 16)
    assert np.allclose(out["scale"].numpy(), SCALE, atol=0.06)
    for name in ("a", "b"):  # every point lies inside both crops
        points = out[f"points_{name}"]
        assert points.min() >= 0 and points.max() <= 15
    # the crops' centre voxels show the same place of the body (to interpolation and the box error)
    centre_a = out["start_a"].numpy() + 8
    true_b = SCALE * centre_a + SHIFT
    assert np.abs(out["start_b"].numpy() + 8 - true_b).max() < TOLERANCE + 0.5


def test_body_coordinate_pairs_are_reproducible_and_need_two_volumes():
    volume_a = body_phantom()
    volume_b = scaled_and_shifted(volume_a)
    sampler = BodyCoordinateSampler(crop_size=8, points=8)  # the automatic threshold
    first, again = (sampler.pair(volume_a, volume_b, np.random.default_rng(5)) for _ in range(2))
    other = sampler.pair(volume_a, volume_b, np.random.default_rng(6))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["points_a"], other["points_a"])
    with pytest.raises(ValueError, match="volume_b"):
        sampler.pair(volume_a, None, np.random.default_rng(0))


def test_body_coordinates_degrade_gracefully_under_a_smooth_non_linear_warp():
    """B(q) = A((q - SHIFT) / SCALE + u(q)) with a smooth random displacement u of up to 3.6 voxels,
    which a per-axis box map cannot undo. Measured over 50 draws: median 1.2, max 2.8 voxels of B."""
    volume_a = body_phantom()
    rng = np.random.default_rng(0)
    factors = tuple(n / 5 for n in SHAPE_B)  # a 5^3 control grid, linearly upsampled to B's shape
    u = np.stack([np.asarray(ndimage.zoom(rng.normal(0, 1.0, (5, 5, 5)), factors, order=1)) for _ in range(3)])
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE_B], indexing="ij"))
    source = (grid - SHIFT[:, None, None, None]) / SCALE[:, None, None, None] + u
    volume_b = ndimage.map_coordinates(volume_a, source, order=1).astype(np.float32)

    def truth(p: np.ndarray) -> np.ndarray:
        """The q with (q - SHIFT) / SCALE + u(q) = p, by fixed-point iteration (a contraction here)."""
        q = SCALE * p + SHIFT
        for _ in range(30):
            at_q = [np.asarray(ndimage.map_coordinates(u[i], q.T, order=1, mode="nearest")) for i in range(3)]
            shift = np.stack(at_q, axis=-1)
            q = SCALE * (p - shift) + SHIFT
        return q

    errors = np.linalg.norm(mapping_errors(BodyCoordinateSampler(16, 32, 0.5), volume_a, volume_b, truth), axis=1)
    assert np.median(errors) < 1.5 and errors.max() < 3.5, (np.median(errors), errors.max())
