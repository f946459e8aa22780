"""``medssl embed --dense``: a SwinEncoder's coarse and fine maps of every cached volume, in the documented
layout, resumable, and read back by Alice's embedding sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr

from medssl.cache import EmbeddingCache, VolumeCache
from medssl.cache import store as cache_mod
from medssl.cli import main
from medssl.data.correspondence import EmbeddingSampler
from medssl.errors import InputError
from medssl.export import embed_cache, export_encoder
from medssl.nn.backbones import build_encoder


@pytest.fixture(scope="module")
def swin():
    """The small SwinEncoder (instance norm needs >= 2 bottleneck voxels: the cached volumes pad to 32×64×64)."""
    torch.manual_seed(0)
    return build_encoder(
        name="swin_unetr", spatial_dims=3, in_channels=1, feature_size=12, depths=(1, 1, 1, 1), window_size=4
    ).eval()


def test_embed_dense_writes_the_documented_layout_and_resumes(swin, volume_cache, tmp_path):
    out = tmp_path / "dense"
    first = embed_cache(swin, volume_cache, out, dense=True, shard=(0, 2), progress=False)  # one volume of two
    assert first.counts()["done"] == 1
    summary = embed_cache(swin, volume_cache, out, dense=True, progress=False)
    assert summary.counts() == {"done": 1, "skipped": 1, "failed": 0}  # the first run's volume is kept

    cache = VolumeCache(volume_cache)
    root = zarr.open_group(out / "cache.zarr", mode="r")
    assert root.attrs["medssl"]["kinds"]["embeddings"]["params"]["dense"] == {  # type: ignore[index]
        "strides": {"coarse": 16, "fine": 4},
        "normalisation": "l2",
    }
    for volume_id in cache.ids:
        shape = cache.shape(volume_id)
        group = root[f"embeddings/{volume_id}"]
        assert isinstance(group, zarr.Group)
        assert group.attrs["status"] == "complete" and group.attrs["shape"] == list(shape)
        expected = None
        if volume_id == "ball":  # the values of one volume (a forward pass costs a second on one core)
            image = torch.from_numpy(np.asarray(cache.image(volume_id), dtype=np.float32))[None, None]
            with torch.inference_mode():
                expected = swin.dense_maps(image)
        for name, stride, channels in (("coarse", 16, 8 * 12), ("fine", 4, 2 * 12)):
            array = group[name]
            assert isinstance(array, zarr.Array) and array.dtype == np.float16
            assert array.shape == (channels, *(math.ceil(n / stride) for n in shape))
            assert array.attrs["stride"] == [stride] * 3 and array.attrs["normalisation"] == "l2"
            stored = np.asarray(array[...], dtype=np.float32)
            np.testing.assert_allclose(np.linalg.norm(stored, axis=0), 1.0, atol=2e-3)  # unit vectors
            if expected is not None:  # the encoder's maps, in float16
                np.testing.assert_allclose(stored, expected[name][0].numpy(), atol=2e-3)
    # what Alice's sampler reads: every volume, checked against the cache's shapes
    sampler = EmbeddingSampler(out, crop_size=8).require(cache.ids)
    volume_id = cache.ids[0]
    embedding = sampler.embedding(volume_id, np.asarray(cache.image(volume_id)))
    assert embedding.fine.shape[0] == 24 and list(embedding.fine_stride) == [4, 4, 4]
    assert EmbeddingCache(out).dense(volume_id)["coarse"].normalised


def test_embed_dense_refuses_tile_caches_and_encoders_without_dense_maps(swin, volume_cache, tmp_path):
    tiles = tmp_path / "tiles"
    cache_mod.open_for_writing(tiles, "slides", {"tile_size": 32})
    with pytest.raises(InputError, match="dense embeddings are made over a volume cache"):
        embed_cache(swin, tiles, tmp_path / "a", dense=True, progress=False)
    resnet = build_encoder(name="resnet18", spatial_dims=3, in_channels=1, width=0.25)
    with pytest.raises(InputError, match="a 'resnet18' encoder has no dense maps; --dense needs"):
        embed_cache(resnet, volume_cache, tmp_path / "b", dense=True, progress=False)
    assert not (tmp_path / "b" / "cache.zarr").exists()  # refused before anything is written


def test_embed_dense_cli_from_an_encoder_file(swin, volume_cache, tmp_path, capsys):
    encoder_file = export_encoder(swin, tmp_path / "swin.pt")
    args = ["embed", str(encoder_file), "--cache", str(volume_cache), "--out", str(tmp_path / "emb"), "--quiet"]
    assert main([*args, "--dense"]) == 0
    assert "2 embedded" in capsys.readouterr().out
    assert EmbeddingCache(tmp_path / "emb").params["dtype"] == "float16"
    # the same folder without --dense is another kind of embedding: refused, naming the change
    assert main(args) == 2
    assert "dense" in capsys.readouterr().err
