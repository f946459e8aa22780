"""``init_checkpoint``: a method's encoder starts from a file's weights (a medssl checkpoint's encoder, an
encoder file, a plain ``state_dict``), loaded strictly at construction, never over a resumed run's."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medssl.errors import InputError
from medssl.export import export_encoder
from medssl.methods.base import MedsslModule
from medssl.methods.ins import INS
from medssl.methods.simclr import SimCLR
from medssl.nn.backbones import build_encoder
from medssl.tasks.slide_inference import load_slide_model
from tests.trainers import quiet_trainer

BACKBONE = {"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.25}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _simclr(**kwargs) -> SimCLR:
    return SimCLR(backbone=BACKBONE, proj_hidden_dim=16, proj_dim=8, **kwargs)


def _trained(seed: int = 1) -> SimCLR:
    """A model whose encoder differs from any fresh one: other seed, and running statistics moved."""
    torch.manual_seed(seed)
    model = _simclr()
    with torch.no_grad():
        for name, buffer in model.encoder.network.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    return model


def _save_checkpoint(model: MedsslModule, path: Path) -> Path:
    """What Lightning writes, reduced to what medssl reads (as in test_encoder_contract)."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "epoch": 3}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def _assert_same_encoder(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_init_from_a_checkpoint_of_another_run_reproduces_its_encoder(tmp_path):
    source = _trained()
    path = _save_checkpoint(source, tmp_path / "run.ckpt")
    torch.manual_seed(2)
    model = _simclr(init_checkpoint=str(path))
    _assert_same_encoder(model.encoder, source.encoder)
    # only the encoder: the projector keeps its own (random) start
    assert not torch.equal(next(model.projector.parameters()), next(source.projector.parameters()))
    # and without the option the encoder is random, i.e. this test fails without the feature
    torch.manual_seed(2)
    fresh, trained = _simclr().encoder.network.state_dict(), source.encoder.network.state_dict()
    assert not torch.equal(fresh["conv1.weight"], trained["conv1.weight"])


def test_init_from_an_encoder_file_and_from_a_plain_state_dict(tmp_path):
    source = _trained()
    exported = export_encoder(_save_checkpoint(source, tmp_path / "run.ckpt"), tmp_path / "encoder.pt")
    _assert_same_encoder(_simclr(init_checkpoint=str(exported)).encoder, source.encoder)
    plain = tmp_path / "monai-resnet18.pt"
    torch.save(source.encoder.network.state_dict(), plain)  # a MONAI network's weights, no medssl wrapping
    _assert_same_encoder(_simclr(init_checkpoint=str(plain)).encoder, source.encoder)


def test_init_encoder_picks_the_encoder_of_a_checkpoint(tmp_path):
    class StudentTeacher(MedsslModule):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = build_encoder(**BACKBONE), build_encoder(**BACKBONE)

        def encoders(self):
            return {"encoder": self.student, "teacher": self.teacher}

    two = StudentTeacher()
    path = tmp_path / "two.ckpt"
    checkpoint = {"state_dict": two.state_dict(), "hyper_parameters": {}}
    two.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    _assert_same_encoder(_simclr(init_checkpoint=str(path), init_encoder="teacher").encoder, two.teacher)
    with pytest.raises(InputError, match="no encoder 'decoder'"):
        _simclr(init_checkpoint=str(path), init_encoder="decoder")


def test_a_torchvision_resnet_state_dict_loads_as_the_same_function(tmp_path):
    """torchvision's and timm's ResNets name their layers as MONAI does, but end in a 1000-class ``fc``
    and have bias-free shortcut convolutions. Built here from a MONAI network with those biases at zero
    (torchvision itself is not a dependency): the loaded encoder computes what the source did."""
    torch.manual_seed(3)
    source = build_encoder(**BACKBONE).eval()
    state = source.network.state_dict()
    with torch.no_grad():
        for key in [k for k in state if k.endswith("downsample.0.bias")]:
            state[key].zero_()
    # older files also lack BatchNorm's step counters, which torch itself fills with 0
    torchvision_like = {k: v for k, v in state.items() if not k.endswith(("downsample.0.bias", "num_batches_tracked"))}
    torchvision_like.update({"fc.weight": torch.randn(1000, source.out_dim), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision_like, path)
    model = _simclr(init_checkpoint=str(path))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.eval()(images), source(images))


def test_a_file_of_another_architecture_is_refused_naming_the_file_and_keys(tmp_path):
    wider = tmp_path / "resnet18-width-0.5.pt"
    torch.save(build_encoder(**{**BACKBONE, "width": 0.5}).network.state_dict(), wider)
    with pytest.raises(
        InputError, match=rf"{re.escape(str(wider))}: a plain state_dict does not fit .*resnet18 .*of other shapes"
    ):
        _simclr(init_checkpoint=str(wider))
    deeper = tmp_path / "resnet34.ckpt"
    _save_checkpoint(SimCLR(backbone={**BACKBONE, "name": "resnet34"}, proj_hidden_dim=8, proj_dim=4), deeper)
    with pytest.raises(
        InputError,
        match=rf"{re.escape(str(deeper))}: the checkpoint's encoder 'encoder', a resnet34 .*not in the model",
    ):
        _simclr(init_checkpoint=str(deeper))
    grey = tmp_path / "grey.pt"
    torch.save(build_encoder(**{**BACKBONE, "in_channels": 1}).network.state_dict(), grey)
    with pytest.raises(InputError, match=r"conv1.weight: file \(16, 1, 7, 7\), model \(16, 3, 7, 7\)"):
        _simclr(init_checkpoint=str(grey))
    with pytest.raises(InputError, match="no such checkpoint file"):
        _simclr(init_checkpoint=str(tmp_path / "missing.pt"))


def test_ins_starts_its_encoder_and_momentum_copy_from_the_file(tmp_path):
    source = _trained()
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.network.state_dict(), path)
    model = INS(backbone=BACKBONE, queue_size=8, num_instances=4, init_checkpoint=str(path))
    _assert_same_encoder(model.encoder, source.encoder)
    assert isinstance(model.momentum_encoder, torch.nn.Module)
    _assert_same_encoder(model.momentum_encoder, source.encoder)
    with pytest.raises(InputError, match="not a medssl backbone"):
        INS(in_dim=8, queue_size=8, init_checkpoint=str(path))
    # a trained slide model loads from its own checkpoint even when the start file is gone
    checkpoint = _save_checkpoint(model, tmp_path / "ins.ckpt")
    path.unlink()
    loaded = load_slide_model(checkpoint)
    assert isinstance(loaded, INS)
    _assert_same_encoder(loaded.encoder, source.encoder)


def test_resuming_keeps_the_checkpoints_weights_not_the_start_file(split_cache, tmp_path):
    """Lightning builds the model (which loads ``init_checkpoint``), then restores the checkpoint over it."""
    from medssl.data.datamodules import TileDataModule

    def fit(model: SimCLR, ckpt_path=None) -> pl.Trainer:
        data = TileDataModule(str(split_cache), batch_size=8, num_workers=0, views="pair", view_size=32, val_split=None)
        trainer = quiet_trainer(tmp_path / "run", max_epochs=1, limit_train_batches=1, limit_val_batches=0)
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return trainer

    first = _simclr()
    callback = fit(first).checkpoint_callback
    assert isinstance(callback, ModelCheckpoint)
    checkpoint = callback.best_model_path
    start = tmp_path / "start.pt"
    torch.save(_trained().encoder.network.state_dict(), start)
    resumed = _simclr(init_checkpoint=str(start))
    fit(resumed, ckpt_path=checkpoint)  # the run is complete: restoring is all that happens
    _assert_same_encoder(resumed.encoder, first.encoder)
