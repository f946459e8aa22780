"""Alice's third correspondence sampler: voxels matched across two "patients" by stored dense embeddings.

The embeddings are oracles (tests/dense_store.py): each cell codes the reference position it shows, and
patient B is patient A under a known random warp (rotation, scale, shift and a smooth deformation,
``medssl.synthetic.volumes.random_warp``), so the true partner of every voxel of A is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from medssl.cache import EmbeddingCache
from medssl.data.correspondence import (
    DenseEmbedding,
    EmbeddingSampler,
    body_box,
    body_point,
    body_threshold,
    crop_padded,
    match_point,
    similarity,
)
from medssl.data.datamodules.volumes import VolumeDataModule
from medssl.data.volumes import VolumePairDataset
from medssl.errors import CacheError
from medssl.synthetic.volumes import random_warp
from tests.dense_store import identity_coords, oracle_maps, write_dense_store

SHAPE_A, SHAPE_B = (48, 64, 64), (52, 60, 64)
#: mean matching error allowed, in voxels of B: the query is its stride-4 cell's centre (up to 1.5 voxels
#: per axis from p_a) and the answer a stride-4 cell centre of B, so quantisation alone gives an RMS of about
#: 2.8 voxels (measured mean: 2.7); one fine cell (4 voxels) on average, never more than two (8).
TOLERANCE, WORST = 4.0, 8.0


def patient_a() -> np.ndarray:
    """``[48, 64, 64]``: an ellipsoidal body (value >= 1, air 0) with smooth inner structure."""
    z, y, x = identity_coords(SHAPE_A)
    body = ((z - 24) / 18) ** 2 + ((y - 32) / 24) ** 2 + ((x - 32) / 26) ** 2 <= 1
    return (body * (1.5 + 0.5 * np.sin(z / 3.0) * np.cos(y / 4.0) + 0.3 * np.sin(x / 2.5))).astype(np.float32)


def patient_b(volume_a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B = A under a seeded random warp: ``(image [52, 60, 64], coords [3, *shape]`` (the voxel of A each
    voxel of B shows), ``inside`` (B voxels that show A, not the padding))."""
    stack = np.concatenate([volume_a[None], identity_coords(SHAPE_A), np.ones((1, *SHAPE_A))]).astype(np.float32)
    field_of_view = np.eye(4)
    field_of_view[:3, 3] = (3.0, -3.0, -5.0)  # B's first voxel shows about A's (3, -3, -5)
    warped = random_warp(  # rotation up to 15° about each axis, scale 1 ± 0.1, shift 3, deformation 2 (voxels)
        torch.from_numpy(stack)[None], np.eye(4), SHAPE_B, field_of_view, np.random.default_rng(0), 15.0, 0.1, 3.0, 2.0
    )
    return warped[0], warped[1:4], warped[4] > 0.999


@pytest.fixture(scope="module")
def patients() -> dict:
    volume_a = patient_a()
    volume_b, coords_b, inside = patient_b(volume_a)
    return {"a": volume_a, "b": volume_b, "coords_b": coords_b, "inside": inside}


def in_memory(maps: dict) -> DenseEmbedding:
    return DenseEmbedding(
        torch.from_numpy(maps["fine"]).float(),
        torch.from_numpy(maps["coarse"]).float(),
        np.full(3, float(maps["fine_stride"])),
        np.full(3, float(maps["coarse_stride"])),
    )


def true_partner(patients: dict, point_a: np.ndarray) -> tuple[np.ndarray, float]:
    """The voxel of B showing what voxel ``point_a`` of A shows, and how far off the best voxel is (in A)."""
    shows = patients["coords_b"].reshape(3, -1).T
    distance = np.linalg.norm(shows - point_a, axis=1)
    distance[~patients["inside"].reshape(-1)] = np.inf
    best = int(np.argmin(distance))
    return np.asarray(np.unravel_index(best, SHAPE_B), dtype=np.float64), float(distance[best])


def store(tmp_path: Path, patients: dict, normalisation: str = "l2", scale: float = 1.0) -> Path:
    """The two patients' oracle maps written by hand (zarr only) in the documented layout."""
    maps_a, maps_b = oracle_maps(identity_coords(SHAPE_A)), oracle_maps(patients["coords_b"])
    for maps in (maps_a, maps_b):
        maps["fine"], maps["coarse"] = maps["fine"] * scale, maps["coarse"] * scale
    return write_dense_store(tmp_path / "emb", {"a": maps_a, "b": maps_b}, normalisation=normalisation)


def test_matcher_finds_the_known_partner_voxel_under_a_random_warp(patients):
    source = in_memory(oracle_maps(identity_coords(SHAPE_A)))
    target = in_memory(oracle_maps(patients["coords_b"]))
    threshold = body_threshold(patients["a"])
    box, rng = body_box(patients["a"], threshold), np.random.default_rng(0)
    errors, unmoved, scores = [], [], []
    for _ in range(40):
        point_a = body_point(patients["a"], threshold, box, rng, 100)
        truth, off = true_partner(patients, point_a)
        assert off < 1.0  # the warp keeps the body in B's field of view: every query has a true partner
        point_b, score = match_point(source, target, point_a)
        errors.append(np.linalg.norm(point_b - truth))
        unmoved.append(np.linalg.norm(point_a - truth))
        scores.append(score)
    assert np.mean(errors) < TOLERANCE and np.max(errors) < WORST, (np.mean(errors), np.max(errors))
    assert np.mean(unmoved) > 1.5 * TOLERANCE  # the warp is large: "the same voxel index" is far off (7.8)
    assert min(scores) > 0.7  # oracle matches clear Alice's threshold


def test_similarity_interpolates_the_coarse_cosine_at_fine_cell_centres():
    rng = np.random.default_rng(0)
    fine = F.normalize(torch.from_numpy(rng.normal(size=(5, 6, 7, 8))).float(), dim=0)
    coarse = F.normalize(torch.from_numpy(rng.normal(size=(4, 2, 2, 3))).float(), dim=0)
    target = DenseEmbedding(fine, coarse, np.array([4.0, 4.0, 4.0]), np.array([12.0, 14.0, 11.0]))
    fine_q, coarse_q = F.normalize(torch.randn(5), dim=0), F.normalize(torch.randn(4), dim=0)
    # independently: grid_sample (align_corners=True, border) of the coarse cosine map at each fine centre
    coarse_cos = torch.einsum("c,cdhw->dhw", coarse_q, coarse)
    axes = []
    for n_fine, n_coarse, stride in zip(fine.shape[1:], coarse.shape[1:], (12.0, 14.0, 11.0), strict=True):
        centre = (torch.arange(n_fine, dtype=torch.float64) + 0.5) * 4.0 - 0.5  # voxels
        index = (centre + 0.5) / stride - 0.5  # continuous coarse cell index
        axes.append(2 * index / (n_coarse - 1) - 1)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).float()[None]
    expected_coarse = F.grid_sample(coarse_cos[None, None], grid, align_corners=True, padding_mode="border")[0, 0]
    expected = (torch.einsum("c,cdhw->dhw", fine_q, fine) + expected_coarse) / 2
    torch.testing.assert_close(similarity(fine_q, coarse_q, target), expected, atol=1e-5, rtol=0)


def test_sampler_crops_matched_voxels_from_a_hand_written_store(patients, tmp_path):
    sampler = EmbeddingSampler(store(tmp_path, patients), crop_size=(16, 20, 20), points=12).require(["a", "b"])
    errors = []
    for seed in range(6):
        out = sampler.pair(patients["a"], patients["b"], np.random.default_rng(seed), ids=("a", "b"))
        assert out["matched"] and out["score"] > 0.7 and out["tries"] >= 1
        start_a, start_b = out["start_a"].numpy(), out["start_b"].numpy()
        # crops centred on the matched voxels, cut from the right volumes
        assert np.array_equal(start_a + [8, 10, 10], np.rint(out["point_a"].numpy()))
        assert np.array_equal(start_b + [8, 10, 10], np.rint(out["point_b"].numpy()))
        assert torch.equal(out["view_a"], crop_padded(patients["a"], start_a.tolist(), (16, 20, 20)))
        assert torch.equal(out["view_b"], crop_padded(patients["b"], start_b.tolist(), (16, 20, 20)))
        assert patients["a"][tuple(out["point_a"].long().tolist())] > 0  # the query is in A's body
        # points: crop voxel q of A with crop voxel q of B, inside both volumes
        assert torch.equal(out["points_a"], out["points_b"]) and out["points_a"].shape == (12, 3)
        for start, shape in ((start_a, SHAPE_A), (start_b, SHAPE_B)):
            voxels = start + out["points_a"].numpy()
            assert (voxels >= 0).all() and (voxels < np.asarray(shape)).all()
        errors.append(np.linalg.norm(out["point_b"].numpy() - true_partner(patients, out["point_a"].numpy())[0]))
    assert np.mean(errors) < TOLERANCE
    again = sampler.pair(patients["a"], patients["b"], np.random.default_rng(5), ids=("a", "b"))
    assert torch.equal(again["view_b"], out["view_b"]) and torch.equal(again["points_a"], out["points_a"])


def test_raw_vectors_are_normalised_on_read(patients, tmp_path):
    normalised = EmbeddingSampler(store(tmp_path / "l2", patients))
    raw = EmbeddingSampler(store(tmp_path / "raw", patients, normalisation="none", scale=7.0))
    a, b = normalised.embedding("b", patients["b"]), raw.embedding("b", patients["b"])
    torch.testing.assert_close(a.fine, b.fine, atol=2e-3, rtol=0)
    torch.testing.assert_close(a.coarse, b.coarse, atol=2e-3, rtol=0)


def test_low_scores_are_retried_then_fall_back_to_the_same_volume(patients, tmp_path):
    maps_a, maps_b = oracle_maps(identity_coords(SHAPE_A)), oracle_maps(patients["coords_b"])
    # the lower half of A (fine cells z < 6) codes anatomy B does not have: an extra axis B never uses
    for maps in (maps_a, maps_b):
        for level in ("fine", "coarse"):
            maps[level] = np.concatenate([maps[level], np.zeros((1, *maps[level].shape[1:]))])
    maps_a["fine"][:, :6], maps_a["coarse"][:, :2] = 0.0, 0.0
    maps_a["fine"][-1, :6], maps_a["coarse"][-1, :2] = 1.0, 1.0
    path = write_dense_store(tmp_path / "emb", {"a": maps_a, "b": maps_b})
    sampler = EmbeddingSampler(path, crop_size=12, points=8, min_score=0.7)
    tries = []
    for seed in range(12):
        out = sampler.pair(patients["a"], patients["b"], np.random.default_rng(seed), ids=("a", "b"))
        assert out["matched"] and out["point_a"][0] >= 24  # only the upper half can match
        tries.append(out["tries"])
    assert max(tries) > 1  # some first queries fell in the unmatched half and were retried

    hopeless = EmbeddingSampler(path, crop_size=12, points=8, min_score=1.01, tries=5)
    out = hopeless.pair(patients["a"], patients["b"], np.random.default_rng(0), ids=("a", "b"))
    assert not out["matched"] and out["tries"] == 5 and 0.7 < out["score"] <= 1.0  # the best score it saw
    assert "geometry_a" in out  # the same-volume fallback: two crops of A with exact correspondences
    index_a, index_b = out["points_a"].long(), out["points_b"].long()
    torch.testing.assert_close(
        out["view_a"][0][index_a[:, 0], index_a[:, 1], index_a[:, 2]],
        out["view_b"][0][index_b[:, 0], index_b[:, 1], index_b[:, 2]],
    )


def test_store_errors_name_the_volume_and_the_fix(patients, tmp_path):
    path = store(tmp_path, patients)
    sampler = EmbeddingSampler(path)
    with pytest.raises(CacheError, match=r"no embeddings for 1 volume\(s\) \(c\); run or resume medssl embed --dense"):
        sampler.require(["a", "c"])
    with pytest.raises(CacheError, match="made from a volume of shape \\[52, 60, 64\\], the cache's is"):
        sampler.embedding("b", patients["a"])
    with pytest.raises(ValueError, match="ids="):
        sampler.pair(patients["a"], patients["b"], np.random.default_rng(0))
    maps = oracle_maps(identity_coords(SHAPE_A))
    bad = write_dense_store(tmp_path / "bad", {"a": {**maps, "fine_stride": 8}})  # grid of stride 4, said 8
    with pytest.raises(CacheError, match=r"fine: shape \(256, 12, 16, 16\), expected \[C, 6, 8, 8\]"):
        EmbeddingCache(bad).dense("a")
    features_only = write_dense_store(tmp_path / "features", {})
    group = zarr.open_group(features_only / "cache.zarr" / "embeddings", mode="r+").create_group("a")
    group.attrs.update({"status": "complete", "shape": [4, 4, 4]})
    group.create_array("features", shape=(4, 8), dtype="float32")
    with pytest.raises(CacheError, match="no dense embeddings .*medssl embed --dense"):
        EmbeddingCache(features_only).dense("a")


def test_volume_pairs_by_embeddings_from_the_datamodule(volume_cache, tmp_path):
    from medssl.cache import VolumeCache

    cache = VolumeCache(volume_cache)
    items = {v: oracle_maps(identity_coords(cache.shape(v))) for v in cache.ids}
    path = write_dense_store(tmp_path / "emb", items)
    dataset = VolumePairDataset(volume_cache, sampler=EmbeddingSampler(path, crop_size=8, points=4), seed=1)
    sample = dataset[(0, 0)]
    assert sample["matched"] and sample["score"] > 0.7 and sample["views"][0].shape == (1, 8, 8, 8)
    data = VolumeDataModule(
        str(volume_cache), mode="pairs", spatial_size=(8, 8, 8), batch_size=1, num_workers=0,
        correspondence="embeddings", embeddings=str(path),
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["matched"].dtype == torch.bool and batch["points_a"].shape == (1, 64, 3)
    missing = write_dense_store(tmp_path / "missing", {"anat": items["anat"]})
    data = VolumeDataModule(
        str(volume_cache), mode="pairs", spatial_size=(8, 8, 8), correspondence="embeddings", embeddings=str(missing)
    )
    with pytest.raises(CacheError, match=r"no embeddings for 1 volume\(s\) \(ball\)"):
        data.setup("fit")
    with pytest.raises(ValueError, match="needs embeddings"):
        VolumeDataModule(str(volume_cache), mode="pairs", spatial_size=(8, 8, 8), correspondence="embeddings")
