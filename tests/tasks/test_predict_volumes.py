"""Predictions go back onto the original scans: the cache's crop, resampling and orientation undone
exactly; a cohort run finishes the good cases, lists the bad, resumes, and never leaves a partial file."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr

from medssl.cache import VolumeCache, store_path
from medssl.cli import main as cli
from medssl.errors import InputError
from medssl.export.encoders import export_encoder
from medssl.nn.backbones import build_encoder
from medssl.preprocess import VolumeParams, cache_volumes
from medssl.preprocess.volume_geometry import (
    cached_affine,
    original_geometry,
    to_original_grid,
    write_nifti_atomically,
)
from medssl.synthetic.volumes import sphere, write_nifti
from medssl.tasks import predict_volumes as predict_module
from medssl.tasks.base import FinetuneTask
from medssl.tasks.checkpoints import load_task_model
from medssl.tasks.predict_volumes import predict_volumes, scores_per_class

#: Array axis 0 runs posterior (−y, 1.5 mm), axis 1 left (−x, 1.2 mm), axis 2 superior (+z, 3 mm): a
#: permuted, flipped, anisotropic grid ("PLS"), far from the RAS grid the cache stores.
PLS = np.array([[0.0, -1.2, 0.0, 30.0], [-1.5, 0.0, 0.0, 35.0], [0.0, 0.0, 3.0, -33.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (48, 50, 22)
RAS_SPACING = (1.2, 1.5, 3.0)  # the same grid spacing along x, y, z: the cache only reorients and crops
CENTERS = {"a": (2.0, -3.0, 1.0), "b": (-4.0, 2.0, -3.0), "c": (0.0, 0.0, 0.0), "d": (3.0, 4.0, 4.0)}
BODIES = {"a": 20.0, "b": 22.0, "c": 24.0, "d": 26.0}  # body radius, mm: a different crop (cached shape) each


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """Four PLS volumes with an 11 mm sphere (label 1) in a 20-26 mm body on a zero background (so the crop
    crops), cached at their own spacing. Volume c's attrs then lose their original geometry, as a cache
    from before it was recorded would."""
    folder = tmp_path_factory.mktemp("predict")
    rows = ["volume_id,image,label,modality,split"]
    for index, (name, center) in enumerate(CENTERS.items()):
        image, label = sphere(SHAPE, PLS, center, 11.0, body_radius_mm=BODIES[name], seed=index)
        write_nifti(folder / f"{name}.nii.gz", image, PLS)
        write_nifti(folder / f"{name}_seg.nii.gz", label, PLS)
        rows.append(f"{name},{name}.nii.gz,{name}_seg.nii.gz,MR,test")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    summary = cache_volumes(
        [folder / "cohort.csv"], folder / "cache", VolumeParams(spacing=RAS_SPACING), progress=False
    )
    assert not summary.failed
    item = zarr.open_group(store_path(folder / "cache"), mode="r+")["volumes/c"]
    item.attrs.put({k: v for k, v in item.attrs.asdict().items() if k != "original"})
    return {"folder": folder, "cache": folder / "cache"}


def original(cohort: dict, name: str, kind: str = "_seg") -> nib.Nifti1Image:
    image = nib.load(cohort["folder"] / f"{name}{kind}.nii.gz")
    assert isinstance(image, nib.Nifti1Image)
    return image


def mapped_back(cache: Path, name: str, cached: np.ndarray) -> np.ndarray:
    attrs = VolumeCache(cache).metadata(name)
    shape, affine = original_geometry(attrs, name)
    return to_original_grid(cached, cached_affine(attrs, name), shape, affine)


def test_round_trip_is_exact_at_the_original_spacing_and_writes_the_original_geometry(cohort, tmp_path):
    cache = VolumeCache(cohort["cache"])
    truth = np.asarray(original(cohort, "a").dataobj).astype(np.uint8)
    cached_label = np.asarray(cache.label("a"))
    assert cached_label.shape != SHAPE  # reoriented and cropped
    back = mapped_back(cohort["cache"], "a", cached_label)
    assert back.shape == SHAPE and np.array_equal(back, truth)
    # the cached grid is exactly the body's bounding box: ones there, background outside the crop
    ones = mapped_back(cohort["cache"], "a", np.ones(cached_label.shape, np.uint8))
    body = np.asarray(original(cohort, "a", "").dataobj) != 0
    box = np.zeros(SHAPE, bool)
    box[tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(body))] = True
    assert 0 < ones.sum() < ones.size and np.array_equal(ones.astype(bool), box)
    written = write_nifti_atomically(tmp_path / "a.nii.gz", back, PLS)
    loaded = nib.load(written)
    assert isinstance(loaded, nib.Nifti1Image)
    assert loaded.shape == SHAPE and np.allclose(np.asarray(loaded.affine), PLS, atol=1e-5)
    assert int(loaded.header["sform_code"]) == int(loaded.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(loaded.dataobj), truth)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]  # no temporary left


def test_round_trip_through_resampling_overlaps_the_original_label(cohort, tmp_path):
    """At 2 mm the label is resampled twice by nearest neighbour, each time moving the sphere's surface by
    up to half a voxel either way (no net shift on average): measured Dice 0.94 for this 11 mm sphere on
    a 1.2 × 1.5 × 3 mm grid; 0.9 leaves room for the boundary voxels, a misplaced grid scores far lower."""
    folder = cohort["folder"]
    (tmp_path / "a.csv").write_text(
        f"volume_id,image,label,modality\na,{folder / 'a.nii.gz'},{folder / 'a_seg.nii.gz'},MR\n"
    )
    summary = cache_volumes(
        [tmp_path / "a.csv"], tmp_path / "cache2", VolumeParams(spacing=(2.0, 2.0, 2.0)), progress=False
    )
    assert not summary.failed
    truth = np.asarray(original(cohort, "a").dataobj).astype(bool)
    back = mapped_back(tmp_path / "cache2", "a", np.asarray(VolumeCache(tmp_path / "cache2").label("a")))
    assert back.shape == SHAPE
    assert dice(back.astype(bool), truth) >= 0.9


def test_nearest_centre_rule_by_hand():
    """Original 1 mm voxels over a 2 mm cached row of four: each takes the cached voxel whose footprint
    holds its centre (ties go up), and the one beyond the row is background; a flipped axis reverses it."""
    cached = np.array([[[1, 2, 3, 4]]], np.uint8)  # [Z, Y, X]
    cached_xyz = np.diag([2.0, 1.0, 1.0, 1.0])
    plain = np.eye(4)
    assert to_original_grid(cached, cached_xyz, (8, 1, 1), plain)[:, 0, 0].tolist() == [1, 2, 2, 3, 3, 4, 4, 0]
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 7.0  # voxel 0 at x = 7 mm: the same row read backwards
    assert to_original_grid(cached, cached_xyz, (8, 1, 1), flipped)[:, 0, 0].tolist() == [0, 4, 4, 3, 3, 2, 2, 1]


class Threshold:
    """A stand-in segmenter: foreground where the normalised image is bright (the sphere). It records the
    shape of every volume it sees and fails on volumes of ``fail_shapes``."""

    def __init__(self, fail_shapes=()):
        self.fail_shapes, self.seen = set(fail_shapes), []

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[0] == 1
        shape = tuple(image.shape[1:])
        self.seen.append(shape)
        if shape in self.fail_shapes:
            raise RuntimeError("out of memory (simulated)")
        return (image[0] > 1.0).to(torch.uint8)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_cohort_finishes_the_good_cases_lists_the_bad_and_resumes(cohort, tmp_path, monkeypatch, capsys):
    cache, out = cohort["cache"], tmp_path / "out"
    shape = {v: VolumeCache(cache).shape(v) for v in CENTERS}
    assert len(set(shape.values())) == len(shape)  # the stand-in tells the cases apart by shape
    predictor = Threshold(fail_shapes=[shape["b"]])
    monkeypatch.setattr(predict_module, "load_segmenter", lambda checkpoint, device="cpu": predictor)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"stand-in")
    command = ["segment", str(checkpoint), "--cache", str(cache), "--out", str(out), "--split", "test", "--quiet"]
    assert cli(command) == 1
    printed = capsys.readouterr()
    assert "2 predicted, 0 already complete, 2 failed" in printed.out and "mean Dice class 1: 1.000" in printed.out
    assert "failed b: " in printed.err and "prediction failed (RuntimeError: out of memory" in printed.err
    assert "failed c: " in printed.err and "records no original geometry" in printed.err
    manifest = {row["id"]: row["status"] for row in rows(out / "manifest.csv")}
    assert manifest == {"a": "done", "b": "failed", "c": "failed", "d": "done"}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "d.nii.gz"]
    assert not list(out.rglob(".*"))  # no temporary left
    for name in ("a", "d"):  # a perfect prediction on the cached grid is the original label, voxel for voxel
        written = nib.load(out / f"{name}.nii.gz")
        assert isinstance(written, nib.Nifti1Image)
        assert written.shape == SHAPE and np.allclose(np.asarray(written.affine), PLS, atol=1e-5)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(original(cohort, name).dataobj))
    metrics = rows(out / "metrics.csv")
    assert [(m["volume_id"], m["class"], float(m["dice"])) for m in metrics] == [("a", "1", 1.0), ("d", "1", 1.0)]
    assert sorted(predictor.seen) == sorted([shape["a"], shape["b"], shape["d"]])  # c failed before predicting

    # the same command again: complete cases untouched, the failed ones retried
    before = stamps(out)
    predictor.seen.clear()
    assert cli(command) == 1
    assert "0 predicted, 2 already complete, 2 failed" in capsys.readouterr().out
    assert predictor.seen == [shape["b"]]
    after = stamps(out)
    assert {k: v for k, v in after.items() if k != "manifest.csv" and k != "metrics.csv"} == {
        k: v for k, v in before.items() if k != "manifest.csv" and k != "metrics.csv"
    }
    # another model (the CLI identifies it by the checkpoint's fingerprint) redoes the complete cases
    predictor.seen.clear()
    summary = predict_volumes(predictor, cache, out, model_id="another model", progress=False)
    assert summary.counts() == {"done": 2, "skipped": 0, "failed": 2}
    assert sorted(predictor.seen) == sorted([shape["a"], shape["b"], shape["d"]])
    assert [r["volume_id"] for r in summary.records] == ["a", "d"] and summary.mean_dice() == {1: 1.0}


def test_a_kill_leaves_no_partial_file_and_an_unrecorded_case_is_redone(cohort, tmp_path, monkeypatch):
    cache, out = cohort["cache"], tmp_path / "out"
    replace = os.replace

    def killed_at(suffix: str):
        def fake(source, target, *args, **kwargs):
            if str(target).endswith(suffix):
                raise KeyboardInterrupt  # not an Exception: nothing catches it, as with a kill
            return replace(source, target, *args, **kwargs)

        return fake

    def killed_while_saving(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"the first bytes of a NIfTI file")
        raise KeyboardInterrupt

    predictor = Threshold()
    with monkeypatch.context() as patch:
        patch.setattr(nib, "save", killed_while_saving)  # killed while the prediction is being written
        with pytest.raises(KeyboardInterrupt):
            predict_volumes(predictor, cache, out, volume_ids=["a"], progress=False)
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*.json"))  # no partial file, no temporary
    monkeypatch.setattr(os, "replace", killed_at(".nii.gz"))  # killed just before the rename
    with pytest.raises(KeyboardInterrupt):
        predict_volumes(predictor, cache, out, volume_ids=["a"], progress=False)
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*.json"))
    monkeypatch.setattr(os, "replace", killed_at(".json"))  # killed after the prediction, before its record
    with pytest.raises(KeyboardInterrupt):
        predict_volumes(predictor, cache, out, volume_ids=["a"], progress=False)
    assert (out / "a.nii.gz").exists() and not list(out.rglob("*.json"))
    monkeypatch.setattr(os, "replace", replace)
    summary = predict_volumes(predictor, cache, out, volume_ids=["a"], progress=False)
    assert summary.counts() == {"done": 1, "skipped": 0, "failed": 0}  # no record: not taken for complete
    assert len(predictor.seen) == 4
    summary = predict_volumes(predictor, cache, out, volume_ids=["a"], progress=False)
    assert summary.counts()["skipped"] == 1 and len(predictor.seen) == 4


def test_scores_per_class_by_hand():
    """As validation scores a case: a class the truth lacks has no score (its false positives show in
    the voxel counts); a class the prediction misses scores 0."""
    prediction = np.array([[[1, 1, 0, 2, 0]]])
    truth = np.array([[[1, 0, 0, 0, 3]]])
    scores = scores_per_class(prediction, truth, num_classes=4, spacing=(1.0, 1.0, 2.0))
    assert scores["dice"] == {"1": pytest.approx(2 / 3), "3": 0.0}
    assert scores["iou"] == {"1": pytest.approx(1 / 2), "3": 0.0}
    # predicted voxels lie 0 and 2 mm (one step along the 2 mm axis) from the truth: 95th percentile 1.9
    assert scores["hd95"] == {"1": pytest.approx(1.9)}
    assert scores["voxels"] == {"1": [2, 1], "2": [1, 0], "3": [0, 1]}


def test_selection_refuses_unknown_ids_and_empty_splits(cohort, tmp_path):
    with pytest.raises(InputError, match="no complete volume 'zz'"):
        predict_volumes(Threshold(), cohort["cache"], tmp_path, volume_ids=["a", "zz"], progress=False)
    with pytest.raises(InputError, match=r"no volume selected .*'test'"):
        predict_volumes(Threshold(), cohort["cache"], tmp_path, splits=["val"], progress=False)


def test_task_model_reloads_without_its_encoder_file(tmp_path, caplog):
    """A fine-tuned model is rebuilt from its checkpoint alone: the encoder file it started from may be gone."""
    encoder_file = export_encoder(
        build_encoder("resnet18", spatial_dims=3, in_channels=1, width=0.25), tmp_path / "e.pt"
    )
    model = FinetuneTask(encoder=str(encoder_file), in_channels=2, channel_adapter="conv1x1")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))  # "trained": unlike both the file and a fresh build
    checkpoint = tmp_path / "task.ckpt"
    data = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(data)
    torch.save(data, checkpoint)
    encoder_file.unlink()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        loaded = load_task_model(checkpoint)
    assert type(loaded) is FinetuneTask and not loaded.training
    assert "random initialisation" not in caplog.text  # the skeleton's origin is not the model's
    assert str(checkpoint) in loaded.encoder_origin
    for (name, expected), (_, got) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(expected, got), name
    with pytest.raises(InputError, match="not a volume segmentation model"):
        predict_module.load_segmenter(checkpoint)
