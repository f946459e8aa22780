"""The encoder foundation every downstream task stands on: mismatches refused before any step, naming
both sides; channel adapters that start equal; frozen encoders that stay frozen (BatchNorm statistics
too); layer-wise decay in the optimiser; checkpoints, encoder files and random initialisation."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from medssl.errors import InputError
from medssl.export.encoders import export_encoder
from medssl.tasks.classification import Classifier
from medssl.tasks.encoders import task_encoder
from tests.trainers import quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

RESNET = {"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.25}


class ListDataModule(pl.LightningDataModule):
    """In-memory samples ``{"image", "label"}`` of one shape, in the per-stage ``datasets`` that
    :meth:`FinetuneTask.setup` checks."""

    def __init__(self, shape: tuple[int, ...], n: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand((n, *shape), generator=generator)
        self.datasets = {"train": [{"image": image, "label": k % 2} for k, image in enumerate(images)]}
        self.classes = ["a", "b"]

    def train_dataloader(self):
        return DataLoader(self.datasets["train"], batch_size=8)  # pyright: ignore[reportArgumentType]  (a list is map-style)


class CountingClassifier(Classifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


def refusal(tmp_path, data_shape, **model) -> str:
    """The InputError a one-epoch fit raises, after checking no training step ran."""
    CountingClassifier.steps = 0
    classifier = CountingClassifier(num_classes=2, **model)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    with pytest.raises(InputError) as error:
        trainer.fit(classifier, ListDataModule(data_shape))
    assert CountingClassifier.steps == 0 and trainer.global_step == 0
    return str(error.value)


def test_mismatches_are_refused_before_any_step_naming_both_sides(tmp_path):
    message = refusal(tmp_path, (3, 32, 32), backbone={**RESNET, "spatial_dims": 3})
    assert "3D resnet18" in message and "2D images" in message
    message = refusal(tmp_path, (1, 32, 32), backbone=RESNET)  # RGB encoder, grey slices, no adapter
    assert "1 channels" in message and "3 (in_channels)" in message and "in_channels: 1" in message
    vit = {"name": "vit_tiny", "spatial_dims": 2, "in_channels": 3, "img_size": 32, "patch_size": 8, "num_layers": 1}
    message = refusal(tmp_path, (3, 36, 36), backbone=vit)
    assert "8-pixel patches" in message and "(36, 36)" in message
    message = refusal(tmp_path, (3, 48, 48), backbone=vit)
    assert "(32, 32)" in message and "(48, 48)" in message


def test_repeat_and_conv1x1_adapters_give_the_same_features_at_the_start():
    torch.manual_seed(0)
    repeat = Classifier(num_classes=2, backbone=RESNET, in_channels=1, channel_adapter="repeat").eval()
    conv = Classifier(num_classes=2, backbone=RESNET, in_channels=1, channel_adapter="conv1x1").eval()
    conv.encoder.load_state_dict(repeat.encoder.state_dict())
    grey = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(conv.features(grey), repeat.features(grey), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in conv.adapter.parameters()) == 3 + 3  # a learned 1×1: weights and biases
    with pytest.raises(InputError, match="2 data channels into the encoder's 3"):
        Classifier(num_classes=2, backbone=RESNET, in_channels=2, channel_adapter="repeat")


def test_frozen_encoder_and_its_batchnorm_statistics_do_not_move_while_the_head_learns(tmp_path):
    torch.manual_seed(0)
    model = Classifier(num_classes=2, backbone=RESNET, finetune="frozen", lr=1e-2)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert any("running_mean" in k for k in before)
    quiet_trainer(tmp_path, max_steps=3, enable_checkpointing=False).fit(model, ListDataModule((3, 32, 32)))
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running stats, batch counts
    assert any(not torch.equal(head[k], v) for k, v in model.head.state_dict().items())


def test_layer_wise_decay_gives_each_stage_lr_times_decay_to_its_depth(tmp_path):
    model = Classifier(num_classes=2, backbone=RESNET, finetune="llrd", layer_decay=0.5, lr=0.1, min_lr=None)
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(model, ListDataModule((3, 32, 32)))
    lr_of = {id(p): group["initial_lr"] for group in trainer.optimizers[0].param_groups for p in group["params"]}
    stages = model.encoder.stages()
    assert len(stages) == 5  # stem, layer1..4
    for depth, stage in enumerate(stages):
        expected = 0.1 * 0.5 ** (len(stages) - depth)
        assert [lr_of[id(p)] for p in stage.parameters()] == pytest.approx([expected] * len(list(stage.parameters())))
    assert {lr_of[id(p)] for p in model.head.parameters()} == {0.1}


def test_checkpoint_encoder_file_and_random_init_load_the_expected_weights(tmp_path):
    torch.manual_seed(0)
    model = Classifier(num_classes=2, backbone=RESNET)
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(model, ListDataModule((3, 32, 32)))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    exported = export_encoder(tmp_path / "model.ckpt", tmp_path / "encoder.pt")
    trained = model.encoder.state_dict()
    for source in (tmp_path / "model.ckpt", exported):
        encoder, origin = task_encoder(source)
        assert origin == str(source) and encoder.config() == model.encoder.config()
        assert all(torch.equal(trained[k], v) for k, v in encoder.state_dict().items())
    control, origin = task_encoder(exported, random_init=True)
    assert "random initialisation" in origin and control.config() == model.encoder.config()
    weights = [k for k in trained if k.endswith("weight") and trained[k].ndim > 1]
    assert not any(torch.equal(trained[k], control.state_dict()[k]) for k in weights)
    with pytest.raises(InputError, match="both given"):
        task_encoder(exported, backbone=RESNET)
