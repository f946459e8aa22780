"""Encoder files, torch.export programs, safe checkpoint loading and ``medssl embed``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from medssl.cache import SlideCache, VolumeCache
from medssl.cli import main, run_lightning
from medssl.errors import InputError, MedsslError
from medssl.export import embed_cache, export_encoder, export_program, load_checkpoint, load_encoder
from medssl.export import embeddings as embeddings_module

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CONFIG = Path(__file__).parents[2] / "configs" / "pretrain" / "simclr_tiles.yaml"


@pytest.fixture(scope="module")
def checkpoint(split_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simclr")
    run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.init_args.cache",
            str(split_cache),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.view_size",
            "32",
            "--model.init_args.proj_hidden_dim",
            "64",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    return next(out.rglob("*.ckpt"))


def _tiles(cache: Path, n: int = 6) -> torch.Tensor:
    slide_cache = SlideCache(cache)
    return torch.from_numpy(slide_cache.tiles(slide_cache.ids[0])[:n]).permute(0, 3, 1, 2)


def test_encoder_file_loads_into_the_monai_network_without_medssl(checkpoint, split_cache, tmp_path):
    from monai.networks.nets import resnet18

    path = export_encoder(checkpoint, tmp_path / "encoder.pt")
    data = torch.load(path, weights_only=True)
    assert data["config"]["name"] == "resnet18" and data["out_dim"] == 512
    assert data["method"].endswith("SimCLR") and data["source"]["epoch"] == 0
    network = resnet18(
        spatial_dims=2, n_input_channels=3, feed_forward=False, conv1_t_stride=data["config"]["stem_stride"]
    ).eval()
    network.load_state_dict(data["state_dict"])
    images = _tiles(split_cache)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    trained = load_encoder(checkpoint)
    torch.testing.assert_close(trained.network.conv1.weight, state["encoder.network.conv1.weight"])
    with torch.no_grad():
        torch.testing.assert_close(network(images / 255.0), trained(images / 255.0))
        torch.testing.assert_close(load_encoder(path)(images / 255.0), trained(images / 255.0))


def test_torch_export_program_runs_without_medssl(checkpoint, split_cache, tmp_path):
    path = export_program(checkpoint, tmp_path / "encoder.pt2", spatial_size=64)
    program = torch.export.load(path).module()
    images = _tiles(split_cache, 3).float() / 255.0
    with torch.no_grad():
        torch.testing.assert_close(program(images), load_encoder(checkpoint)(images), rtol=1e-4, atol=1e-4)


class _Payload:
    """Unpickling this runs code: it would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_with_pickled_code_are_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload(marker)}, evil)
    with pytest.raises(InputError, match="evil.ckpt: refused: it holds pickled Python objects"):
        load_checkpoint(evil)
    assert not marker.exists()
    assert main(["export", str(evil), "--out", str(tmp_path / "x.pt")]) == 2 and not marker.exists()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.ckpt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_embed_aligns_features_with_tiles_and_resumes(checkpoint, split_cache, tmp_path, monkeypatch):
    out = tmp_path / "embeddings"
    first = SlideCache(split_cache).num_tiles("a")
    kill_at = -(-first // 4) + 2  # the second batch of the second slide
    real, calls = embeddings_module._Embedder._embed, []

    def killed(self, images):
        calls.append(len(images))
        if len(calls) == kill_at:
            raise KeyboardInterrupt  # a kill between two batches of a slide
        return real(self, images)

    monkeypatch.setattr(embeddings_module._Embedder, "_embed", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_cache(checkpoint, split_cache, out, batch_size=4, progress=False)
    monkeypatch.setattr(embeddings_module._Embedder, "_embed", real)
    summary = embed_cache(checkpoint, split_cache, out, batch_size=16, progress=False)
    assert summary.counts() == {"done": 2, "skipped": 1, "failed": 0}
    tiles, encoder = SlideCache(split_cache), load_encoder(out / "encoder.pt")
    group = zarr.open_group(out / "cache.zarr", mode="r")["embeddings"]
    for slide_id in tiles.ids:
        features = group[f"{slide_id}/features"][:]
        assert features.shape == (tiles.num_tiles(slide_id), 512)
        np.testing.assert_array_equal(group[f"{slide_id}/coords"][:], tiles.coords(slide_id))
        rows = [0, tiles.num_tiles(slide_id) - 1]  # first and last tile: row i is tile i
        pixels = torch.from_numpy(tiles.tiles(slide_id)[rows]).permute(0, 3, 1, 2) / 255.0
        with torch.no_grad():
            np.testing.assert_allclose(features[rows], encoder(pixels).numpy(), rtol=1e-4, atol=1e-4)
    assert not [p for p in (out / "cache.zarr" / "staging" / "embeddings").iterdir() if p.is_dir()]
    again = embed_cache(checkpoint, split_cache, out, batch_size=16, progress=False)
    assert again.counts()["skipped"] == 3


def test_embed_refuses_another_encoder_and_bags_read_the_features(checkpoint, split_cache, tmp_path):
    from medssl.data.bags import SlideBagDataset

    out = tmp_path / "embeddings"
    embed_cache(checkpoint, split_cache, out, batch_size=32, dtype="float16", progress=False)
    other = load_checkpoint(checkpoint)
    other["state_dict"]["encoder.network.conv1.weight"] += 1.0
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(MedsslError, match="encoder_sha256"):
        embed_cache(tmp_path / "other.ckpt", split_cache, out, progress=False)
    bags = SlideBagDataset(split_cache, features=out)
    assert bags[0]["instances"].shape == (SlideCache(split_cache).num_tiles(bags.slide_ids[0]), 512)


def test_embed_volume_slices_and_cli(volume_cache, tmp_path, capsys):
    run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG.with_name("simclr_slices.yaml")),
            "--data.init_args.cache",
            str(volume_cache),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.spatial_size",
            "[32, 32]",
            "--model.init_args.proj_hidden_dim",
            "32",
            "--model.init_args.backbone",
            '{"name": "resnet18", "spatial_dims": 2, "in_channels": 1}',
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    assert main(["embed", str(ckpt), "--cache", str(volume_cache), "--out", str(tmp_path / "emb"), "--quiet"]) == 0
    assert "2 embedded" in capsys.readouterr().out
    volumes = VolumeCache(volume_cache)
    group = zarr.open_group(tmp_path / "emb" / "cache.zarr", mode="r")["embeddings"]
    for volume_id in volumes.ids:
        assert group[f"{volume_id}/features"].shape == (volumes.shape(volume_id)[0], 512)
    assert main(["info", str(tmp_path / "emb")]) == 0  # the width a slide model's in_dim needs, per item
    printed = capsys.readouterr().out
    assert all(f"{v}: {volumes.shape(v)[0]} rows × 512" in printed for v in volumes.ids), printed
    assert main(["embed", str(ckpt), "--cache", str(tmp_path), "--out", str(tmp_path / "e2")]) == 2
    assert main(["export", str(ckpt), "--out", str(tmp_path / "enc.pt2"), "--size", "32", "32"]) == 0
    assert os.path.getsize(tmp_path / "enc.pt2") > 0
