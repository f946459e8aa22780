"""The joint 2D/3D recipes through ``medssl fit``: the three staged configs chain (each stage starts from
the previous stage's checkpoint, the mask stage leaves f_intra untouched, the 3D stage clusters every
training volume), and the trained encoders come out through ``medssl embed`` and ``medssl export``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from medssl.cli import run_lightning
from medssl.export import embed_cache, export_encoder, load_encoder
from medssl.export.encoders import load_checkpoint
from tests.methods.test_cli_fit import tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
CONFIGS = Path(__file__).parents[2] / "configs" / "pretrain"
STAGES = ["stage1_intra", "stage2_mask", "stage3_inter"]


def weights(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def staged(volume_cache, tmp_path_factory) -> dict[str, dict]:
    """Run the three stage configs in a fresh folder, as a user would from the repository root."""
    root = tmp_path_factory.mktemp("staged")
    previous, checkpoints = None, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for stage in STAGES:
            config = CONFIGS / f"joint_2d3d_{stage}.yaml"
            chain = ["--model.init_args.init_checkpoint", previous] if previous else []
            run_lightning(tiny(config, volume_cache, root / stage, *chain))
            last = (
                root
                / "runs"
                / "joint-2d3d-staged"
                / {"stage1_intra": "1-intra", "stage2_mask": "2-mask"}.get(stage, "3-inter")
            )
            previous = str(last / "last.ckpt")
            checkpoints[stage] = load_checkpoint(previous)
    return {"root": root, **checkpoints}


def test_stage_configs_chain_from_each_others_last_checkpoint(staged):
    intra, mask, inter = (staged[s]["state_dict"] for s in STAGES)
    # the mask stage starts from stage 1's f_intra and leaves it (and its BatchNorm statistics) untouched
    assert same(weights(intra, "encoder."), weights(mask, "encoder."))
    # ... while it trains f_inter, which stage 1 did not
    assert not same(
        weights(intra, "volume_encoder.network.transformer."), weights(mask, "volume_encoder.network.transformer.")
    )
    # the 3D stage clusters every training volume once the bank is filled
    assert (inter["memories.inter.assignments"] >= 0).all()
    assert staged["stage3_inter"]["hyper_parameters"]["stage"] == "inter"


def test_the_3d_stage_starts_from_the_mask_stages_f_inter(staged, volume_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(staged["root"])
    config = CONFIGS / "joint_2d3d_stage3_inter.yaml"
    start = str(staged["root"] / "runs" / "joint-2d3d-staged" / "2-mask" / "last.ckpt")
    arguments = tiny(config, volume_cache, tmp_path, "--model.init_args.init_checkpoint", start)[1:]  # no subcommand
    cli = run_lightning(arguments, run=False)
    built = cli.model.state_dict()
    mask = staged["stage2_mask"]["state_dict"]
    for part in ("volume_encoder.network.transformer.", "volume_encoder.network.projection.", "encoder."):
        assert same(weights(built, part), weights(mask, part)), part


def test_embed_writes_slice_tokens_and_the_volume_embedding_and_export_rebuilds_both(staged, volume_cache, tmp_path):
    checkpoint = staged["root"] / "runs" / "joint-2d3d-staged" / "3-inter" / "last.ckpt"
    summary = embed_cache(checkpoint, volume_cache, tmp_path / "z", encoder_name="volume_encoder", progress=False)
    assert summary.counts()["done"] == 2
    group = zarr.open_group(str(tmp_path / "z" / "cache.zarr"), mode="r")["embeddings"]["anat"]
    tokens, volume = np.asarray(group["features"]), np.asarray(group["volume"])
    assert volume.shape == (1, 16) and tokens.shape[1] == 16
    from medssl.cache import VolumeCache

    assert tokens.shape[0] == VolumeCache(volume_cache).shape("anat")[0]  # one token per axial slice
    assert np.linalg.norm(volume) == pytest.approx(1.0, rel=1e-5)
    # the exported volume encoder gives the same Z
    exported = load_encoder(export_encoder(checkpoint, tmp_path / "volume.pt", name="volume_encoder"))
    image = torch.from_numpy(np.asarray(VolumeCache(volume_cache).image("anat"), dtype=np.float32))[None, None]
    with torch.no_grad():
        np.testing.assert_allclose(exported(image).numpy(), volume, atol=1e-5)
    # f_intra alone is a plain MONAI 2D ResNet
    from monai.networks.nets import resnet18

    plain = resnet18(spatial_dims=2, n_input_channels=1, feed_forward=False, conv1_t_stride=2, widen_factor=0.25)
    saved = torch.load(export_encoder(checkpoint, tmp_path / "f_intra.pt"), weights_only=True)
    plain.load_state_dict(saved["state_dict"])


def test_the_volume_encoder_exports_as_a_program_for_any_batch(staged, tmp_path):
    from medssl.export import export_program

    checkpoint = staged["root"] / "runs" / "joint-2d3d-staged" / "3-inter" / "last.ckpt"
    program = torch.export.load(export_program(checkpoint, tmp_path / "v.pt2", (8, 32, 32), name="volume_encoder"))
    volumes = torch.rand(3, 1, 8, 32, 32)
    with torch.no_grad():
        expected = load_encoder(checkpoint, "volume_encoder")(volumes)
    torch.testing.assert_close(program.module()(volumes), expected, atol=1e-5, rtol=1e-4)


def test_2d_images_from_another_datamodule_join_l_intra(volume_cache, tmp_path, monkeypatch):
    """StacksAndImagesDataModule: stacks for all three losses plus two-view 2D slices for L_intra."""
    from tests.methods.test_cli_fit import JOINT_TINY

    monkeypatch.chdir(tmp_path)
    stacks = {"cache": str(volume_cache), "mode": "stacks", "spatial_size": [8, 32, 32], "batch_size": 1}
    images = {"cache": str(volume_cache), "mode": "slices", "spatial_size": [32, 32], "batch_size": 4}
    data = {
        "class_path": "medssl.data.StacksAndImagesDataModule",
        "init_args": {
            name: {"class_path": "medssl.data.VolumeDataModule", "init_args": {**args, "num_workers": 0}}
            for name, args in (("volumes", stacks), ("images", images))
        },
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": data}))
    backbone = '{"name": "resnet18", "spatial_dims": 2, "in_channels": 1, "width": 0.25}'
    cli = run_lightning(
        ["fit", "--config", str(CONFIGS / "joint_2d3d.yaml"), "--config", str(tmp_path / "data.yaml")]
        + [*JOINT_TINY, "--model.init_args.backbone", backbone, "--trainer.max_epochs", "1"]
        + ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"]
        + ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    )
    metrics = cli.trainer.callback_metrics
    assert {"train/intra_images", "train/intra", "train/inter", "train/mask"} <= set(metrics)
    assert cli.trainer.global_step == 2 and cli.trainer._accelerator_connector.use_distributed_sampler is False
