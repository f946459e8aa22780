"""Speed switches for an accelerator, each run on a CPU: channels-last encoders train as the default layout
does, compiled encoders train and checkpoint as before (the encoder contract unchanged), and the step timer
accounts for every step. bf16 is Lightning's precision flag: tests/methods/test_cli_fit.py runs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from medssl.cli import run_lightning
from medssl.data.datamodules import TileDataModule
from medssl.export import load_encoder
from medssl.methods.callbacks import EncoderSpeedups, StepTimer, to_channels_last
from medssl.methods.simclr import SimCLR
from tests.methods.test_cli_fit import CONFIGS, tiny
from tests.trainers import quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SMALL = {"backbone": {"name": "resnet18", "in_channels": 3, "width": 0.25}, "proj_hidden_dim": 32, "proj_dim": 16}


def test_channels_last_converts_convolution_weights_only_and_in_place():
    plane, volume, head = nn.Conv2d(3, 4, 3), nn.Conv3d(2, 4, 3), nn.Linear(4, 4)
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)
    network = nn.ModuleDict({"plane": plane, "volume": volume, "up": up, "head": head})
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    objects = {name: id(p) for name, p in network.named_parameters()}
    assert to_channels_last(network) == 3
    assert plane.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plane.weight.is_contiguous()
    assert volume.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert up.weight.is_contiguous(memory_format=torch.channels_last)
    assert head.weight.is_contiguous()
    for name, p in network.named_parameters():  # the same Parameters (an optimiser keeps them), same values
        assert id(p) == objects[name] and torch.equal(p, before[name])
    assert to_channels_last(network) == 0  # already done: idempotent
    # cuDNN and oneDNN convolutions follow the weight's layout: NCHW / NCDHW inputs need no conversion
    assert plane(torch.rand(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert volume(torch.rand(2, 2, 5, 6, 7)).is_contiguous(memory_format=torch.channels_last_3d)


def first_convolution(model: SimCLR) -> nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


def _fit_two_steps(cache: Path, root: Path, callbacks: list[pl.Callback]) -> tuple[SimCLR, pl.Trainer, TileDataModule]:
    pl.seed_everything(0)
    model = SimCLR(**SMALL)
    data = TileDataModule(str(cache), batch_size=8, num_workers=0, views="pair", view_size=32, val_split=None)
    trainer = quiet_trainer(root, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, data)
    return model, trainer, data


def test_channels_last_trains_as_the_default_layout_and_the_timer_counts_each_step(split_cache, tmp_path):
    plain, plain_trainer, _ = _fit_two_steps(split_cache, tmp_path / "plain", [])
    timer = StepTimer(skip=0, report=False)
    speedups = EncoderSpeedups(channels_last=True)
    fast, fast_trainer, data = _fit_two_steps(split_cache, tmp_path / "fast", [speedups, timer])
    conv1 = first_convolution(fast).weight
    assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()
    assert first_convolution(plain).weight.is_contiguous()
    # the second step's loss: after one update made with channels-last weights and gradients
    torch.testing.assert_close(
        fast_trainer.callback_metrics["train/loss"], plain_trainer.callback_metrics["train/loss"], atol=1e-5, rtol=1e-5
    )
    # and the weights after two updates (not the biases of convolutions before a BatchNorm: their gradient
    # is rounding noise whose sign AdamW turns into a full-size step either way)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        if name.endswith("weight"):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)

    assert [s.samples for s in timer.steps] == [8, 8]
    assert all(s.data >= 0 and s.views >= 0 and s.compute > 0 for s in timer.steps)
    assert [s.first for s in timer.steps] == [True, False]
    summary = timer.summary()  # the steady steps: not the epoch's first, whose wait holds the loader's start
    assert summary["steps"] == 1 and summary["epoch_starts"] == 1 and summary["peak_mib"] is None  # no GPU
    assert summary["samples_per_s"] == pytest.approx(8 / timer.steps[1].total)
    assert summary["epoch_start_ms"] == pytest.approx(1e3 * timer.steps[0].total)
    assert 0 <= summary["stall"] < 1
    assert "on_after_batch_transfer" not in vars(data)  # the views hook is unwrapped after the fit


GRAPHS: list[torch.fx.GraphModule] = []  #: what the counting backend was given


def counting_backend(graph: torch.fx.GraphModule, example_inputs) -> Callable[..., Any]:
    """A torch.compile backend (by name, as a config gives it) that records each graph and runs it as traced."""
    GRAPHS.append(graph)
    return graph.forward


if "medssl_test_counting" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(counting_backend, name="medssl_test_counting")


def test_compiled_encoders_train_and_checkpoint_as_before(split_cache, tmp_path):
    """``--trainer.callbacks+=...EncoderSpeedups`` with ``compile``: the encoder is traced (by a counting
    backend here; inductor needs a compiler toolchain), trains, and its checkpoint has the keys and encoder
    records of an uncompiled model, so ``medssl export``/``embed`` load it."""
    GRAPHS.clear()
    torch._dynamo.reset()
    vit = '{"name": "vit_tiny", "in_channels": 3, "img_size": 32, "patch_size": 8, "num_layers": 1}'
    config = next(c for c in CONFIGS if c.stem == "simclr_tiles")
    switches = [
        "--trainer.callbacks+=medssl.methods.callbacks.EncoderSpeedups",
        *("--trainer.callbacks.compile=true", "--trainer.callbacks.compile_backend=medssl_test_counting"),
    ]
    extra = ["--model.init_args.backbone", vit, "--trainer.limit_val_batches", "0", *switches]
    cli = run_lightning(tiny(config, split_cache, tmp_path, *extra))
    torch._dynamo.reset()
    assert GRAPHS, "the encoder was not compiled"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    uncompiled = SimCLR(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    assert list(checkpoint["state_dict"]) == list(uncompiled.state_dict())
    assert checkpoint["medssl_encoders"] == uncompiled.encoder_records()
    loaded = load_encoder(next(tmp_path.rglob("*.ckpt"))).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), cli.model.encoder.eval()(images), atol=1e-5, rtol=1e-5)
