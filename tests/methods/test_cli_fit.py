"""`medssl fit --config` through LightningCLI: every pretraining config runs, monitors log, bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medssl.cli import run_lightning
from tests.ddp import fit_on_two_cpu_processes, fit_on_two_started_processes

# configs/mil: the MIL tests; MADELEINE trains on patch features: tests/tasks/test_slide_embeddings.py fits its config
CONFIGS = sorted(
    c for c in (Path(__file__).parents[2] / "configs" / "pretrain").rglob("*.yaml") if "Madeleine" not in c.read_text()
)


JOINT_TINY = [
    *("--model.init_args.d_model", "16", "--model.init_args.proj_hidden_dim", "16"),
    *("--model.init_args.intra_proj_dim", "8", "--model.init_args.intra_prototypes", "8"),
    *("--model.init_args.inter_prototypes", "4", "--model.init_args.inter_clusters", "[1]"),
    *("--model.init_args.transformer", '{"layers": 1, "ffn_dim": 24, "heads": 2}'),
    *("--model.init_args.warmup_epochs", "0"),  # one step: a warm-up would make it a step of lr 0
    *("--model.init_args.init_checkpoint", "null"),  # the staged configs chain: tests/methods/test_joint_2d3d_fit.py
]


ALICE_TINY = [
    *("--model.init_args.out_dim", "16", "--model.init_args.patch_out_dim", "16"),
    *("--model.init_args.head_hidden_dim", "32", "--model.init_args.bottleneck_dim", "8"),
    *("--model.init_args.casa_heads", "2", "--model.init_args.mask_block", "8", "--model.init_args.warmup_epochs", "0"),
]


def is_volume_config(config: Path) -> bool:
    return "VolumeDataModule" in config.read_text()


def tiny(config: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    """The config at toy size: batch 8, 32-pixel views, a quarter-width ResNet-18, two steps on CPU."""
    channels = 1 if is_volume_config(config) else 3
    size = ["--data.init_args.spatial_size", "[32, 32]"] if channels == 1 else ["--data.init_args.view_size", "32"]
    text = config.read_text()
    model = ["--model.init_args.n_prototypes", "16"] if "SwAV" in text else []
    if "LVMMed" in text:  # graphs of 4 images fit a batch of 8
        model = ["--model.init_args.graph_size", "4", "--model.init_args.knn", "2"]
    batch = 8
    if "Alice" in text:  # the one training volume, crops of 32x32x64, a one-block-per-stage SwinUNETR
        size = ["--data.init_args.spatial_size", "[32, 32, 64]"]
        swin = '{"in_channels": 1, "feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4}'
        model = [*ALICE_TINY, "--model.init_args.backbone", swin]
        return ["fit", "--config", str(config), "--data.init_args.cache", str(cache)] + [
            *("--data.init_args.num_workers", "0", "--data.init_args.batch_size", "1", *size, *model),
            *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu"),
            *("--trainer.devices", "1", "--trainer.default_root_dir", str(out)),
            *("--trainer.enable_progress_bar", "false", *extra),
        ]
    if "JointIntraInter" in text:  # stacks of 8 slices of the one training volume, a small f_inter
        batch, size, model = 1, ["--data.init_args.spatial_size", "[8, 32, 32]"], JOINT_TINY
    return [
        "fit",
        "--config",
        str(config),
        "--data.init_args.cache",
        str(cache),
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.batch_size",
        str(batch),
        *size,
        *model,
        "--model.init_args.backbone",
        f'{{"name": "resnet18", "spatial_dims": 2, "in_channels": {channels}, "width": 0.25}}',
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_briefly_and_monitors(config, split_cache, volume_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs that chain (joint 2D/3D stages) save checkpoints under ./runs
    volumes = is_volume_config(config)
    cli = run_lightning(tiny(config, volume_cache if volumes else split_cache, tmp_path))
    metrics = cli.trainer.callback_metrics
    assert "train/loss" in metrics and "val/rankme" in metrics
    for labelled in ("val/knn_accuracy", "val/linear_probe_accuracy"):
        assert (labelled in metrics) != volumes  # slices carry no class label, so RankMe alone
    assert 1.0 <= float(metrics["val/rankme"]) <= 512
    assert list(tmp_path.rglob("*.ckpt")) and list(tmp_path.rglob("config.yaml"))
    assert list(tmp_path.rglob("events.out.tfevents.*")) and list(tmp_path.rglob("metrics.csv"))  # both loggers
    # the configs leave use_distributed_sampler out: the CLI turns it off for medssl DataModules
    assert cli.trainer._accelerator_connector.use_distributed_sampler is False
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["trainer"]["use_distributed_sampler"] is False


def configured_views_on(config: Path) -> str:
    """Where the config makes its training views (``views_on`` in its data block; ``auto`` when unset)."""
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    return str(data.get("views_on", "auto"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_also_fits_with_views_made_the_other_way(config, split_cache, volume_cache, tmp_path, monkeypatch):
    """The test above runs each config as written; here the same config with ``views_on`` switched (CPU
    views ↔ device views), one training step, so both ways are known to run for every config."""
    monkeypatch.chdir(tmp_path)
    other = {"auto": "device", "cpu": "device", "device": "cpu"}[configured_views_on(config)]  # auto: CPU here
    cache = volume_cache if is_volume_config(config) else split_cache
    args = tiny(config, cache, tmp_path, "--data.init_args.views_on", other, "--trainer.limit_val_batches", "0")
    args[args.index("--trainer.limit_train_batches") + 1] = "1"
    cli = run_lightning(args)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    datamodule = cli.datamodule
    assert datamodule.views_on == other and (datamodule.device_views is not None) == (other == "device")


def test_misspelt_key_is_named(split_cache, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_lightning(tiny(CONFIGS[0], split_cache, tmp_path, "--model.init_args.temprature", "0.2"))
    assert "temprature" in capsys.readouterr().err


def test_two_process_ddp_fit_from_the_command_line(split_cache, tmp_path):
    """`--trainer.devices 2 --trainer.strategy ddp` on CPU (gloo): Lightning re-launches the command, each
    rank takes its half of the tiles, and one checkpoint comes out."""
    config = next(c for c in CONFIGS if c.stem == "swav_tiles")
    fit_on_two_cpu_processes(tiny(config, split_cache, tmp_path))
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1


def test_lvm_med_fits_under_two_process_ddp(split_cache, tmp_path):
    """LVM-Med under DDP, each rank building its graphs from its own half of the tiles, on two processes
    started for it (torchrun-style): the command line's re-launch, the same for every config, is the test
    above's."""
    config = next(c for c in CONFIGS if c.stem == "lvm_med_tiles")
    fit_on_two_started_processes(tiny(config, split_cache, tmp_path))
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1


def test_mixed_precision_is_a_trainer_flag(split_cache, tmp_path):
    config = next(c for c in CONFIGS if c.stem == "swav_tiles")
    extra = ["--trainer.precision", "bf16-mixed", "--trainer.limit_val_batches", "0"]
    cli = run_lightning(tiny(config, split_cache, tmp_path, *extra))
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and cli.trainer.precision == "bf16-mixed"
