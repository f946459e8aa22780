"""Landmark matching with dense features: for a landmark voxel of volume A, the most similar voxel of
volume B, and how far (mm) it lies from the landmark's true counterpart. SAM (Yan et al. 2022) and Alice
test dense anatomical embeddings this way; it needs no labels, only known correspondences.

Feature maps are ``[C, d, h, w]`` at an integer ``stride`` of the volume's voxel grid ``[Z, Y, X]``:
voxel ``v`` sits at map coordinate ``(v + 0.5) / stride - 0.5``, the convention of
``F.interpolate(..., align_corners=False)``, so stride 1 is a map on the voxels themselves. A
landmark's similarity to a voxel of B is the cosine similarity of their features averaged over the
levels (e.g. ``fine`` and ``coarse``), each level's similarity map upsampled trilinearly to B's voxels:
SAM's coarse-and-fine matching.

Correspondences are given as ``positions`` ``[Z, Y, X, 3]`` per volume: the anatomical position (mm
in a common frame, e.g. a template's) of each voxel. The error of a match is the distance between the
positions of the landmark and of the matched voxel; ``best_possible_mm`` is the error of the best
voxel of B (B's grid cannot do better), which also flags landmarks B does not show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def features_at_voxels(feature_map: torch.Tensor, stride: int, voxels: torch.Tensor) -> torch.Tensor:
    """``[L, C]``: ``feature_map`` ``[C, d, h, w]`` trilinearly interpolated at ``voxels`` ``[L, 3]``
    (``z, y, x`` of the volume; clamped to the map's edge, as ``F.interpolate`` does)."""
    size = torch.tensor(feature_map.shape[1:], dtype=torch.float64)
    on_map = (voxels.double() + 0.5) / stride - 0.5
    normalised = (2 * on_map + 1) / size - 1  # align_corners=False
    grid = normalised.flip(-1).to(feature_map.dtype)[None, :, None, None]  # grid_sample wants (x, y, z)
    sampled = F.grid_sample(feature_map[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, :, 0, 0].T


def similarity_to_voxels(queries: torch.Tensor, feature_map: torch.Tensor, stride: int, shape: Sequence[int]):
    """``[L, *shape]``: cosine similarity of each query ``[L, C]`` with ``feature_map`` ``[C, d, h, w]``,
    computed on the map and upsampled trilinearly to the ``shape`` voxel grid."""
    return _on_voxels(_cosine(queries, F.normalize(feature_map, dim=0)), stride, shape)


def _cosine(queries: torch.Tensor, unit_map: torch.Tensor) -> torch.Tensor:
    return torch.einsum("lc,cdhw->ldhw", F.normalize(queries, dim=1), unit_map)


def _on_voxels(similarity: torch.Tensor, stride: int, shape: Sequence[int]) -> torch.Tensor:
    """``similarity`` ``[L, d, h, w]`` at ``stride`` upsampled to the voxels and cropped to ``shape``."""
    if stride != 1:
        similarity = F.interpolate(similarity[None], scale_factor=stride, mode="trilinear", align_corners=False)[0]
    if any(have < want for have, want in zip(similarity.shape[1:], shape, strict=True)):
        raise ValueError(f"a similarity map {tuple(similarity.shape[1:])} does not cover the voxels {tuple(shape)}")
    return similarity[:, : shape[0], : shape[1], : shape[2]]


def landmark_similarity(
    maps_a: Mapping[str, torch.Tensor],
    maps_b: Mapping[str, torch.Tensor],
    strides: Mapping[str, int],
    landmarks: torch.Tensor,
    shape_b: Sequence[int],
) -> torch.Tensor:
    """``[L, *shape_b]``: the cosine similarity of each landmark voxel ``[L, 3]`` of A with every voxel of B,
    averaged over the levels named in ``strides`` (each upsampled to B's voxels): the map whose maximum
    :func:`match_landmarks` takes, and the picture of how sure a match is."""
    total = torch.zeros(len(landmarks), *shape_b)
    for level, stride in strides.items():
        queries = features_at_voxels(maps_a[level].float(), stride, landmarks)
        total += similarity_to_voxels(queries, maps_b[level].float(), stride, shape_b)
    return total / max(1, len(strides))


def match_landmarks(
    maps_a: Mapping[str, torch.Tensor],
    maps_b: Mapping[str, torch.Tensor],
    strides: Mapping[str, int],
    landmarks: torch.Tensor,
    shape_b: Sequence[int],
    chunk: int = 16,
) -> torch.Tensor:
    """``[L, 3]`` long: for each landmark voxel ``[L, 3]`` of A, the voxel of B (``shape_b``) whose
    similarity, averaged over the levels named in ``strides`` (:func:`landmark_similarity`), is highest.
    Chunked over landmarks so only ``chunk`` similarity volumes are held at once."""
    matches = []
    for start in range(0, len(landmarks), chunk):
        total = landmark_similarity(maps_a, maps_b, strides, landmarks[start : start + chunk], shape_b)
        best = total.flatten(1).argmax(dim=1)
        matches.append(torch.stack(torch.unravel_index(best, tuple(shape_b)), dim=-1))
    return torch.cat(matches) if matches else torch.zeros(0, 3, dtype=torch.long)


def _at(positions: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    voxels = voxels.long()
    return positions[voxels[:, 0], voxels[:, 1], voxels[:, 2]].double()


def landmark_offsets_mm(
    landmarks: torch.Tensor, matches: torch.Tensor, positions_a: torch.Tensor, positions_b: torch.Tensor
) -> torch.Tensor:
    """``[L, 3]``: the position of each match in B less its landmark's position in A (mm, along the
    positions' own axes: x, y, z for :func:`voxel_positions_mm`), to tell in-plane from through-plane error."""
    return _at(positions_b, matches) - _at(positions_a, landmarks)


def landmark_errors_mm(
    landmarks: torch.Tensor, matches: torch.Tensor, positions_a: torch.Tensor, positions_b: torch.Tensor
) -> torch.Tensor:
    """``[L]``: distance (mm) between the anatomical positions of each landmark of A and its match in B."""
    return landmark_offsets_mm(landmarks, matches, positions_a, positions_b).norm(dim=-1)


def voxel_positions_mm(affine, shape: Sequence[int]) -> torch.Tensor:
    """``[Z, Y, X, 3]`` float64: the world position (mm; x, y, z) of every voxel of a ``[Z, Y, X]`` array
    whose ``affine`` (4 × 4) maps voxel indices ``(x, y, z, 1)`` to world, as a medssl volume cache records
    it (``metadata["affine"]``). Two scans of one frame (one scanner session, or registered) show the same
    place at the same position: the known answer of landmark matching between them."""
    matrix = torch.as_tensor(affine, dtype=torch.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"an affine is 4 x 4, got shape {tuple(matrix.shape)}")
    axes = [torch.arange(int(n), dtype=torch.float64) for n in shape]
    zyx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return zyx.flip(-1) @ matrix[:3, :3].T + matrix[:3, 3]


def pick_landmarks(
    mask: torch.Tensor,
    positions_a: torch.Tensor,
    positions_b: torch.Tensor,
    n: int,
    within_mm: float,
    seed: int = 0,
) -> torch.Tensor:
    """``[L ≤ n, 3]`` long: voxels of ``mask`` (A's ``[Z, Y, X]`` bool, e.g. its body) in a seeded random
    order, keeping those that B shows (B has a voxel within ``within_mm`` of the same position, so a match
    can be right); ``4·n`` candidates are tried."""
    voxels = mask.nonzero()
    generator = torch.Generator().manual_seed(seed)
    candidates = voxels[torch.randperm(len(voxels), generator=generator)[: 4 * n]]
    if len(candidates) == 0:
        return candidates
    shown = counterparts(candidates, positions_a, positions_b)[0] <= within_mm
    return candidates[shown][:n]


def counterparts(
    landmarks: torch.Tensor, positions_a: torch.Tensor, positions_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distance [L] mm, voxel [L, 3])``: the voxel of B whose position is nearest each landmark's
    position in A: the right answer on B's grid, and how far even it is (about half a voxel diagonal
    where B shows the landmark; large where it lies outside B's field of view). A k-d tree over B's
    positions: any positions (deformed grids too), and a second to build for a million voxels."""
    from scipy.spatial import KDTree

    targets = _at(positions_a, landmarks)
    if len(targets) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.long)
    tree = KDTree(positions_b.reshape(-1, 3).double().numpy(), balanced_tree=False, compact_nodes=False)
    distance, flat = tree.query(targets.numpy())
    voxels = torch.stack(torch.unravel_index(torch.from_numpy(flat), tuple(positions_b.shape[:3])), dim=-1)
    return torch.from_numpy(distance).double(), voxels.long()


def best_possible_mm(landmarks: torch.Tensor, positions_a: torch.Tensor, positions_b: torch.Tensor) -> torch.Tensor:
    """``[L]``: the smallest error any voxel of B could give each landmark of A (about half a voxel
    diagonal where B shows it; large where the landmark lies outside B's field of view)."""
    return counterparts(landmarks, positions_a, positions_b)[0]


def intensity_patches(image: torch.Tensor, size: int = 5) -> torch.Tensor:
    """``[size³, Z, Y, X]``: each voxel's ``size³`` neighbourhood of ``image`` ``[Z, Y, X]`` (edges repeated),
    centred over its channels, so that cosine similarity of two voxels is the normalised cross-correlation
    of their patches: the no-learning baseline of dense matching."""
    kernels = torch.eye(size**3, dtype=image.dtype).reshape(size**3, 1, size, size, size)
    padded = F.pad(image[None, None], (size // 2,) * 6, mode="replicate")
    patches = F.conv3d(padded, kernels)[0]
    return patches - patches.mean(dim=0, keepdim=True)


def intensity_levels(
    image: torch.Tensor, strides: tuple[int, int] = (1, 4), size: int = 5
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``(maps, strides)`` of the no-learning baseline in the form :func:`match_landmarks` takes: ``fine``
    and ``coarse``, the ``size³`` patches (:func:`intensity_patches`) of the image average-pooled by each of
    ``strides``: normalised cross-correlation at two scales, like a network's two maps. (1, 4) is
    ``pipelines/alice_experiment.py``'s; (2, 8) costs an eighth and suits finely sampled volumes."""

    def pooled(stride: int) -> torch.Tensor:
        if stride == 1:
            return image.float()
        return F.avg_pool3d(image[None, None].float(), stride, ceil_mode=True)[0, 0]

    fine, coarse = strides
    maps = {"fine": intensity_patches(pooled(fine), size), "coarse": intensity_patches(pooled(coarse), size)}
    return maps, {"fine": fine, "coarse": coarse}
