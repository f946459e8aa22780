"""Alice's pairs from a volume cache: corresponding crops, seeded by (seed, epoch, index)."""

from __future__ import annotations

import torch

from medssl.data.correspondence import SameVolumeSampler
from medssl.data.volumes import VolumePairDataset


def test_pairs_show_the_same_voxels_at_corresponding_points_and_reproduce(volume_cache):
    sampler = SameVolumeSampler(crop_size=(8, 16, 16), points=5)
    dataset = VolumePairDataset(volume_cache, sampler=sampler, seed=3)
    first = dataset[(0, 0)]
    view_a, view_b = first["views"]
    assert view_a.shape == view_b.shape == (1, 8, 16, 16) and first["index"] == 0
    a = first["points_a"].round().long()
    b = first["points_b"].round().long()
    torch.testing.assert_close(view_a[0][a[:, 0], a[:, 1], a[:, 2]], view_b[0][b[:, 0], b[:, 1], b[:, 2]])
    again = VolumePairDataset(volume_cache, sampler=sampler, seed=3)[(0, 0)]
    assert torch.equal(again["views"][0], view_a) and torch.equal(again["points_b"], first["points_b"])
    assert not torch.equal(dataset[(0, 1)]["views"][0], view_a)  # a new epoch, new crops


def test_cross_patient_partners_share_the_modality_unless_a_volume_is_alone():
    from medssl.data.volumes import partner_candidates

    assert partner_candidates(["MR", "CT", "MR", "MR", "PET"]) == [[2, 3], [0, 2, 3, 4], [0, 3], [0, 2], [0, 1, 2, 3]]
    assert partner_candidates([None, None, None]) == [[1, 2], [0, 2], [0, 1]]


def test_the_dataset_reads_each_volumes_modality_from_the_cache(volume_cache):
    sampler = SameVolumeSampler(crop_size=(8, 16, 16), points=5)
    dataset = VolumePairDataset(volume_cache, sampler=sampler, seed=3, splits=None)
    modalities = [dataset.cache.metadata(v)["modality"] for v in dataset.volume_ids]
    assert modalities == ["MR", "MR"] and dataset.partners == [[1], [0]]
    assert dataset[(0, 0)]["partner_id"] == dataset.volume_ids[1]
