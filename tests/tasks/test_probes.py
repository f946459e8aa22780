"""``medssl probe`` end to end on tiny embedding folders (a random-init ResNet-18 at width 0.25 over the
shared tile cache, and over six small volumes of our own), and the errors a user can cause."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.cache import EmbeddingCache
from medssl.errors import MedsslError
from medssl.export.embeddings import embed_cache
from medssl.nn.backbones import build_encoder
from medssl.tasks.probes import load_probe_set, probe_embeddings


def _encoder(in_channels: int):
    torch.manual_seed(0)
    return build_encoder(name="resnet18", in_channels=in_channels, width=0.25)


@pytest.fixture(scope="module")
def tile_embeddings(split_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe-tiles") / "embeddings"
    embed_cache(_encoder(3), split_cache, out, batch_size=512, progress=False)
    return out


def _tile_labels(features: Path, path: Path, split: dict[str, str] | None = None, row_column: str = "index") -> Path:
    """Per-tile labels the embeddings can tell apart (the sign of feature 0 about its median), so only a
    probe fed each tile's own row scores well: rows and labels out of step fall to chance."""
    embeddings = EmbeddingCache(features)
    rows = {item: np.asarray(embeddings.features(item)[:], dtype=np.float32) for item in embeddings.ids}
    median = np.median(np.concatenate(list(rows.values()))[:, 0])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", row_column, "label"] + (["split"] if split else []))
        for item, values in rows.items():
            for index, value in enumerate(values[:, 0]):
                writer.writerow([item, index, "high" if value > median else "low"] + ([split[item]] if split else []))
    return path


def test_tile_probe_end_to_end_through_the_cli(split_cache, tile_embeddings, tmp_path, capsys):
    from medssl.cli import main

    labels = _tile_labels(tile_embeddings, tmp_path / "tiles.csv")
    out = tmp_path / "probe"
    args = [str(tile_embeddings), "--cache", str(split_cache), "--out", str(out), "--labels", str(labels)]
    assert main(["probe", *args, "--level", "tile", "--shots", "1", "5", "100000", "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "linear" in printed and "knn" in printed and "skipped" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated_on"] == "val" and results["splits"] == "cache"  # split_cache: a train; b, c val
    assert results["classes"] == ["high", "low"] and results["probes"]["linear"]["l2"] == 1e-3
    assert results["probes"]["linear"]["metrics"]["balanced_accuracy"] > 0.9
    assert results["probes"]["knn"]["metrics"]["auroc"] > 0.8
    few = results["few_shot"]["results"]
    assert len(few["linear"]["5"]["folds"]) == 3 and "skipped" in few["knn"]["100000"]
    with open(out / "few_shot.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["probe"], r["shots"]) for r in rows] == [(p, k) for p in ("linear", "knn") for k in ("1", "5", "100000")]
    assert float(rows[1]["balanced_accuracy_mean"]) == pytest.approx(few["linear"]["5"]["mean"]["balanced_accuracy"])
    assert sorted(p.name for p in out.iterdir()) == ["few_shot.csv", "results.json"]  # no temporary left


def test_slide_embedding_is_the_mean_of_its_tiles_and_csv_splits_override(split_cache, tile_embeddings, tmp_path):
    labels = tmp_path / "slides.csv"
    labels.write_text("slide_id,label,split\na,tumor,train\nb,normal,train\nc,tumor,test\n")
    data = load_probe_set(tile_embeddings, split_cache, labels)
    assert data.labels == ["tumor", "normal", "tumor"] and data.splits == ["train", "train", "test"]
    rows = np.asarray(EmbeddingCache(tile_embeddings).features("b")[:], dtype=np.float64)
    np.testing.assert_allclose(data.x[1].numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
    results = probe_embeddings(tile_embeddings, split_cache, tmp_path / "out", labels, shots=(1, 2), folds=2)
    assert results["evaluated_on"] == "test" and results["counts"]["test"] == {"tumor": 1}
    assert results["probes"]["knn"]["metrics"]["auroc"] is None  # one class in the test split
    assert "fewer than 2" in results["few_shot"]["results"]["linear"]["2"]["skipped"]


def test_errors_name_what_to_fix(split_cache, tile_embeddings, tmp_path):
    with pytest.raises(MedsslError, match=r"train split has no samples of class \['normal'\]"):
        probe_embeddings(tile_embeddings, split_cache, tmp_path / "o")  # cache labels: only a (tumor) trains
    labels = tmp_path / "slides.csv"
    labels.write_text("slide_id,label,split\na,tumor,train\nb,normal,train\nc,stroma,test\n")
    with pytest.raises(MedsslError, match=r"unknown class names \['stroma'\] in the test split"):
        probe_embeddings(tile_embeddings, split_cache, tmp_path / "o", labels, classes=["normal", "tumor"])
    labels.write_text("slide_id,label\na,tumor\nz,normal\n")
    with pytest.raises(MedsslError, match=r"slide_id \['z'\] not among the complete slides"):
        probe_embeddings(tile_embeddings, split_cache, tmp_path / "o", labels)
    labels.write_text("slide_id,label,split\na,tumor,train\nb,normal,train\nc,tumor,test\n")
    partial = tmp_path / "partial"
    embed_cache(_encoder(3), split_cache, partial, shard=(0, 3), progress=False)  # embeds slide a only
    with pytest.raises(MedsslError, match=r"no embeddings for 2 .*\(b, c\); run or resume medssl embed"):
        probe_embeddings(partial, split_cache, tmp_path / "o", labels)
    assert not (tmp_path / "o").exists()  # nothing written by a refused run


@pytest.fixture(scope="module")
def volume_embeddings(tmp_path_factory) -> dict:
    """Six small sphere phantoms (three per class, radius tells them apart), cached without splits."""
    from medssl.preprocess import VolumeParams, cache_volumes
    from medssl.synthetic.volumes import grid_affine, sphere, write_nifti

    folder = tmp_path_factory.mktemp("probe-volumes")
    affine = grid_affine((4.0, 4.0, 4.0), origin=(-32.0, -32.0, -16.0))
    rows = ["volume_id,image,modality"]
    for i in range(6):
        image, _ = sphere((16, 16, 8), affine, (0.0, 0.0, 0.0), 8.0 + 8.0 * (i % 2), body_radius_mm=30.0)
        write_nifti(folder / f"v{i}.nii.gz", image, affine)
        rows.append(f"v{i},v{i}.nii.gz,MR")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    params = VolumeParams(spacing=(4.0, 4.0, 4.0), crop_foreground=False)
    assert not cache_volumes([folder / "cohort.csv"], folder / "cache", params, progress=False).failed
    embed_cache(_encoder(1), folder / "cache", folder / "embeddings", progress=False)
    return {"cache": folder / "cache", "features": folder / "embeddings", "folder": folder}


def test_volumes_without_splits_get_a_stratified_case_split(volume_embeddings, tmp_path):
    cache, features = volume_embeddings["cache"], volume_embeddings["features"]
    with pytest.raises(MedsslError, match="labels missing.*--labels CSV with columns volume_id,label"):
        probe_embeddings(features, cache, tmp_path / "o")
    labels = tmp_path / "volumes.csv"
    labels.write_text("volume_id,label\n" + "".join(f"v{i},{'big' if i % 2 else 'small'}\n" for i in range(6)))
    results = probe_embeddings(features, cache, tmp_path / "out", labels, level="volume", shots=(1,), folds=2)
    assert results["splits"] == "stratified by case (seed 0)"
    assert results["counts"] == {s: {"big": 1, "small": 1} for s in ("train", "val", "test")}
    assert results["probes"]["linear"]["l2_val_balanced_accuracy"] is not None  # l2 chosen on val
    slices = tmp_path / "slices.csv"
    slices.write_text(
        "volume_id,index,label\n" + "".join(f"v{i},{z},{'a' if z < 2 else 'b'}\n" for i in range(6) for z in range(4))
    )
    data = load_probe_set(features, cache, slices, level="slice")
    assert len(data.labels) == 24 and data.labels[:4] == ["a", "a", "b", "b"]
    with pytest.raises(MedsslError, match="per-volume labels need one label per volume"):
        load_probe_set(features, cache, slices, level="volume")


def test_the_printed_table_keeps_every_column_apart():
    """ "logistic" is as wide as the name column once was: it ran into the split ("logistictest")."""
    from medssl.eval.probes import METRICS
    from medssl.tasks.probes import format_table

    metrics = dict.fromkeys(METRICS, 0.5)
    results = {
        "evaluated_on": "test",
        "probes": {"logistic": {"metrics": metrics}, "knn": {"metrics": metrics}},
        "few_shot": {
            "folds": 10,
            "results": {"logistic": {1: {"mean": metrics, "std": metrics}, 10: {"skipped": "x"}}},
        },
    }
    rows = [line.split() for line in format_table(results).splitlines()]
    assert rows[1][:2] == ["logistic", "test"] and rows[2][:2] == ["knn", "test"]
    assert rows[5][:2] == ["logistic", "1"] and rows[6][:3] == ["logistic", "10", "skipped:"]


def test_tile_labels_as_write_tile_labels_names_them_probe_the_same_rows(split_cache, tile_embeddings, tmp_path):
    """``write_tile_labels`` (and the fine-tuning DataModules) call the row column ``tile``; probes take it as is."""
    from medssl.tasks.probes import load_probe_set

    by_index = load_probe_set(tile_embeddings, split_cache, _tile_labels(tile_embeddings, tmp_path / "i.csv"), "tile")
    by_tile = _tile_labels(tile_embeddings, tmp_path / "t.csv", row_column="tile")
    assert load_probe_set(tile_embeddings, split_cache, by_tile, "tile").labels == by_index.labels
    assert len(set(by_index.labels)) == 2
