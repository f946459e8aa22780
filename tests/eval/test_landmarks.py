"""Landmark matching with dense features: matches, errors in mm and the intensity-patch baseline, on
cases whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssl.eval.landmarks import (
    best_possible_mm,
    counterparts,
    features_at_voxels,
    intensity_levels,
    intensity_patches,
    landmark_errors_mm,
    landmark_offsets_mm,
    landmark_similarity,
    match_landmarks,
    pick_landmarks,
    similarity_to_voxels,
    voxel_positions_mm,
)

SHAPE = (10, 12, 9)
SPACING = 3.0


def _grid_positions(shape=SHAPE, spacing=SPACING, offset=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """``[Z, Y, X, 3]``: each voxel's position in mm on a plain grid."""
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) * spacing + torch.tensor(offset)


def _landmarks(n: int = 20, margin: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(margin, s - margin, (n,), generator=generator) for s in SHAPE], dim=-1)


def test_identical_features_match_every_landmark_to_itself_with_zero_error():
    features = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    maps = {"fine": features}
    landmarks = _landmarks()
    matches = match_landmarks(maps, maps, {"fine": 1}, landmarks, SHAPE, chunk=7)
    assert torch.equal(matches, landmarks)
    positions = _grid_positions()
    assert torch.equal(landmark_errors_mm(landmarks, matches, positions, positions), torch.zeros(len(landmarks)))


def test_features_shifted_by_two_voxels_give_two_voxels_of_error():
    """B's voxel v + (2, 0, 0) carries A's features of v but shows the same anatomy as A's v (same
    positions): every match is two slices off, 2 × 3 mm = 6 mm."""
    features = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    shifted = torch.roll(features, shifts=2, dims=1)
    landmarks = _landmarks()
    landmarks[:, 0] = landmarks[:, 0].clamp(max=SHAPE[0] - 3)  # v + 2 inside B
    matches = match_landmarks({"fine": features}, {"fine": shifted}, {"fine": 1}, landmarks, SHAPE)
    assert torch.equal(matches, landmarks + torch.tensor([2, 0, 0]))
    positions = _grid_positions()
    errors = landmark_errors_mm(landmarks, matches, positions, positions)
    torch.testing.assert_close(errors, torch.full((len(landmarks),), 2 * SPACING, dtype=torch.float64))


def test_levels_average_so_a_coarse_level_breaks_a_fine_tie():
    """The fine level cannot tell two halves apart (the same features repeat); a coarse level at stride 4
    can: the average of the two picks the right half."""
    half = torch.randn(8, 8, 8, 4, generator=torch.Generator().manual_seed(3))
    fine = torch.cat([half, half], dim=3)  # x and x + 4 look the same
    coarse = torch.zeros(2, 2, 2, 2)
    coarse[0, :, :, 0], coarse[1, :, :, 1] = 1.0, 1.0  # left vs right at stride 4
    landmarks = torch.tensor([[3, 4, 1], [5, 2, 6], [1, 6, 2]])
    strides = {"fine": 1, "coarse": 4}
    maps = {"fine": fine, "coarse": coarse}
    assert torch.equal(match_landmarks(maps, maps, strides, landmarks, (8, 8, 8)), landmarks)


def test_sampling_a_strided_map_at_voxels_equals_upsampling_it_first():
    feature_map = torch.randn(5, 3, 4, 3, generator=torch.Generator().manual_seed(4))
    up = F.interpolate(feature_map[None], scale_factor=4, mode="trilinear", align_corners=False)[0]
    voxels = torch.tensor([[0, 0, 0], [11, 15, 11], [5, 7, 2], [2, 13, 9]])
    expected = up[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T
    torch.testing.assert_close(features_at_voxels(feature_map, 4, voxels), expected)
    # the similarity of a map's own voxel feature with that voxel is 1 (cosine, upsampled the same way)
    similarity = similarity_to_voxels(expected, feature_map, 4, (12, 16, 12))
    assert similarity.shape == (4, 12, 16, 12)
    own = similarity[torch.arange(4), voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    assert torch.all(own <= 1 + 1e-5) and torch.all(own > 0.5)


def test_the_best_possible_error_is_the_offset_between_the_grids():
    landmarks = _landmarks()
    a, b = _grid_positions(), _grid_positions(offset=(1.0, 0.0, 0.0))  # B's voxels sit 1 mm away along z
    torch.testing.assert_close(best_possible_mm(landmarks, a, b), torch.ones(len(landmarks), dtype=torch.float64))


def test_intensity_patches_are_invariant_to_gain_and_offset():
    image = torch.rand(*SHAPE, generator=torch.Generator().manual_seed(5))
    patches, scanned = intensity_patches(image, 3), intensity_patches(3.0 * image + 7.0, 3)
    assert patches.shape == (27, *SHAPE)
    torch.testing.assert_close(F.normalize(patches, dim=0), F.normalize(scanned, dim=0), atol=1e-4, rtol=1e-4)
    # the centre channel of a voxel's patch is the voxel itself, less the patch mean
    z, y, x = 4, 5, 3
    torch.testing.assert_close(
        patches[13, z, y, x], image[z, y, x] - image[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].mean()
    )


def test_landmark_similarity_is_the_mean_of_the_levels_and_its_maximum_is_the_match():
    fine = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(6))
    coarse = torch.randn(4, 4, 4, 3, generator=torch.Generator().manual_seed(7))
    maps, strides, landmarks = {"fine": fine, "coarse": coarse}, {"fine": 1, "coarse": 4}, _landmarks(5)
    similarity = landmark_similarity(maps, maps, strides, landmarks, SHAPE)
    each = [
        similarity_to_voxels(features_at_voxels(maps[level], stride, landmarks), maps[level], stride, SHAPE)
        for level, stride in strides.items()
    ]
    torch.testing.assert_close(similarity, (each[0] + each[1]) / 2)
    best = torch.stack(torch.unravel_index(similarity.flatten(1).argmax(dim=1), SHAPE), dim=-1)
    assert torch.equal(match_landmarks(maps, maps, strides, landmarks, SHAPE), best)


def test_offsets_split_the_error_into_its_axes():
    landmarks = torch.tensor([[1, 2, 3]])
    matches = torch.tensor([[2, 2, 3]])  # one slice further along z
    positions = voxel_positions_mm(torch.diag(torch.tensor([1.5, 1.5, SPACING, 1.0])), SHAPE)
    torch.testing.assert_close(
        landmark_offsets_mm(landmarks, matches, positions, positions), torch.tensor([[0.0, 0.0, SPACING]]).double()
    )
    torch.testing.assert_close(
        landmark_errors_mm(landmarks, matches, positions, positions), torch.tensor([SPACING]).double()
    )


def test_voxel_positions_follow_the_affine_on_x_y_z_indices():
    """The cache stores [Z, Y, X] and its affine maps (x, y, z, 1): voxel [z, y, x] = [2, 1, 3] with
    spacing (0.5, 2, 3) mm and origin (10, 20, 30) sits at (10 + 1.5, 20 + 2, 30 + 6)."""
    affine = [[0.5, 0, 0, 10.0], [0, 2.0, 0, 20.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1]]
    positions = voxel_positions_mm(affine, (4, 3, 5))
    assert positions.shape == (4, 3, 5, 3)
    torch.testing.assert_close(positions[2, 1, 3], torch.tensor([11.5, 22.0, 36.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="4 x 4"):
        voxel_positions_mm([[1, 0], [0, 1]], (2, 2, 2))


def test_picked_landmarks_lie_in_the_mask_and_in_what_b_shows_and_replay_with_the_seed():
    """B is A shifted 9 mm (3 slices) along z: A's first 3 slices have no counterpart within 1 mm."""
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[:, 2:9, 2:7] = True
    a, b = _grid_positions(), _grid_positions(offset=(3 * SPACING, 0.0, 0.0))
    picked = pick_landmarks(mask, a, b, n=10, within_mm=1.0, seed=3)
    assert len(picked) == 10
    assert mask[picked[:, 0], picked[:, 1], picked[:, 2]].all() and (picked[:, 0] >= 3).all()
    assert torch.equal(picked, pick_landmarks(mask, a, b, n=10, within_mm=1.0, seed=3))
    assert not torch.equal(picked, pick_landmarks(mask, a, b, n=10, within_mm=1.0, seed=4))


def test_intensity_levels_are_patches_of_the_image_pooled_by_each_stride():
    image = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(8))
    maps, strides = intensity_levels(image, size=3)
    assert strides == {"fine": 1, "coarse": 4}
    torch.testing.assert_close(maps["fine"], intensity_patches(image, 3))
    pooled = image.reshape(2, 4, 2, 4, 2, 4).mean(dim=(1, 3, 5))
    torch.testing.assert_close(maps["coarse"], intensity_patches(pooled, 3))
    maps, strides = intensity_levels(image, strides=(2, 4), size=3)
    assert strides == {"fine": 2, "coarse": 4} and maps["fine"].shape == (27, 4, 4, 4)
    torch.testing.assert_close(maps["fine"], intensity_patches(image.reshape(4, 2, 4, 2, 4, 2).mean(dim=(1, 3, 5)), 3))


def test_counterparts_are_the_nearest_voxels_of_b_and_their_distance():
    """B's grid sits 1 mm further along the first axis: A's voxel v is nearest B's voxel v, 1 mm away
    (B's neighbours are 2 and 4 mm away at a 3 mm spacing)."""
    landmarks = _landmarks(6)
    a, b = _grid_positions(), _grid_positions(offset=(1.0, 0.0, 0.0))
    distance, voxels = counterparts(landmarks, a, b)
    assert torch.equal(voxels, landmarks)
    torch.testing.assert_close(distance, torch.ones(6, dtype=torch.float64))
    # B shifted by two whole voxels: A's voxel v is B's voxel v − 2 (0 mm)
    distance, voxels = counterparts(landmarks, a, _grid_positions(offset=(-2 * SPACING, 0.0, 0.0)))
    torch.testing.assert_close(distance, torch.zeros(6, dtype=torch.float64))
    assert torch.equal(voxels, landmarks + torch.tensor([2, 0, 0]))
