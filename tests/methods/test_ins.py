"""INS's parts, each against a hand computation: candidate sets from slide labels, the soft-label
schedule and update, prototype and queue updates, the warm-up InfoNCE, the bag rules; and the guarantee
that training never sees instance truth."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from medssl.data.datamodules import BagDataModule, InstanceDataModule
from medssl.data.truth import LesionMasks
from medssl.methods.ins import INS, bag_probability, candidate_labels, confidence_weight
from tests.ddp import fit_mil_on_two_processes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_candidate_sets_come_from_slide_labels():
    assert candidate_labels(torch.tensor([0, 1, 1])).tolist() == [[1, 0], [1, 1], [1, 1]]
    with pytest.raises(ValueError, match="binary slide labels"):
        candidate_labels(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="binary slide labels"):
        candidate_labels(torch.tensor([-1, 1]))  # unlabelled slides cannot train INS


def test_confidence_weight_goes_from_095_to_08_over_training():
    assert confidence_weight(0, 40) == pytest.approx(0.95)
    assert confidence_weight(20, 40) == pytest.approx(0.875)
    assert confidence_weight(40, 40) == pytest.approx(0.8)


def test_bag_rules():
    p = torch.tensor([0.1, 0.9, 0.2, 0.6])
    assert float(bag_probability(p, "mean")) == pytest.approx(0.45)
    assert float(bag_probability(p, "max")) == pytest.approx(0.9)
    assert float(bag_probability(p, "topk", top_k=2)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="bag rule"):
        bag_probability(p, "median")


def small_ins(**kwargs) -> INS:
    torch.manual_seed(0)
    options = dict(in_dim=6, hidden_dim=8, proj_dim=4, queue_size=16, num_instances=10, feature_dropout=0.0)
    return INS(**{**options, **kwargs})


class FakeTrainer:
    """Just what INS reads from its trainer during a step."""

    max_epochs = 10


def run_step(model: INS, batch: dict, epoch: int) -> torch.Tensor:
    model._trainer = FakeTrainer()
    model.trainer.current_epoch = epoch
    model.log_dict = model.log = lambda *a, **k: None
    type(model).current_epoch = property(lambda self: epoch)
    try:
        return model.training_step(batch, 0)
    finally:
        del type(model).current_epoch


def batch_of(labels, index) -> dict:
    torch.manual_seed(1)
    return {"instances": torch.randn(len(labels), 6), "label": torch.tensor(labels), "index": torch.tensor(index)}


def test_prototypes_move_one_instance_at_a_time_towards_their_pseudo_class():
    model = small_ins(prototype_momentum=0.9)
    start = F.normalize(torch.randn(2, 4), dim=1)
    model.prototypes.copy_(start)
    q = F.normalize(torch.randn(3, 4), dim=1)
    model._update_prototypes(q, torch.tensor([1, 0, 1]))
    expected = start.clone()
    for vector, label in zip(q, [1, 0, 1]):
        expected[label] = F.normalize(0.9 * expected[label] + 0.1 * vector, dim=0)
    torch.testing.assert_close(model.prototypes, expected)


@pytest.mark.parametrize("start, positive", [("candidates", [0.5, 0.5]), ("bag", [0.0, 1.0])])
def test_soft_labels_start_from_the_slide_and_then_move_towards_the_prototype_class(start, positive):
    model = small_ins(prototype_start=1, soft_label_start=start)
    batch = batch_of([0, 1, 1, 0], [0, 1, 2, 3])
    run_step(model, batch, epoch=0)  # warm-up: soft labels are initialised, not moved
    assert model.soft_labels[:4].tolist() == [[1, 0], positive, positive, [1, 0]]
    assert torch.isnan(model.soft_labels[4:]).all()  # not seen yet

    # after warm-up: s ← φ s + (1 − φ) onehot(argmax(prototype scores ⊙ Y)), prototypes as before the step
    with torch.no_grad():
        q = F.normalize(model.head(model.encoder(batch["instances"])), dim=1)
        scores = torch.softmax(q @ model.prototypes.T, dim=1) * candidate_labels(batch["label"])
    phi = confidence_weight(1, FakeTrainer.max_epochs)
    before = model.soft_labels[:4].clone()
    expected = phi * before + (1 - phi) * F.one_hot(scores.argmax(1), 2).float()
    run_step(model, batch, epoch=1)
    torch.testing.assert_close(model.soft_labels[:4], expected)
    assert model.soft_labels[[0, 3]].tolist() == [[1, 0], [1, 0]]  # negative slides stay negative


def test_the_candidate_set_masks_both_the_prediction_and_the_prototype_target():
    """Instances of negative slides sit on the positive prototype and the classifier calls everything
    positive: the candidate set alone keeps them negative, in the pseudo-labels (queue, prototype
    updates) and in the soft-label target. Dropping either mask fails here."""
    model = small_ins(prototype_start=1)
    batch = batch_of([0, 0, 0, 1], [0, 1, 2, 3])
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([-10.0, 10.0]))
        q = F.normalize(model.head(model.encoder(batch["instances"])), dim=1)
        model.prototypes.copy_(F.normalize(torch.stack([-q[:3].mean(0), q[:3].mean(0)]), dim=1))
    positive_before = model.prototypes[1].clone()
    run_step(model, batch, epoch=1)
    assert model.soft_labels[:3].tolist() == [[1, 0]] * 3  # the prototype target is masked
    assert model.queue.contents()[1][:3].tolist() == [0, 0, 0]  # the prediction is masked
    moved_by_the_positive_slide_only = F.normalize(0.9 * positive_before + 0.1 * q[3], dim=0)
    torch.testing.assert_close(model.prototypes[1], moved_by_the_positive_slide_only)


def test_the_queue_holds_momentum_keys_with_their_pseudo_labels():
    model = small_ins()
    batch = batch_of([0, 1, 1, 0, 1], [0, 1, 2, 3, 4])
    run_step(model, batch, epoch=0)
    keys, labels = model.queue.contents()
    assert keys.shape == (5, 4) and torch.allclose(keys.norm(dim=1), torch.ones(5))
    assert labels[[0, 3]].tolist() == [0, 0]  # negative slides' instances can only be pseudo-labelled 0
    with torch.no_grad():
        expected = F.normalize(model.momentum_head(model.momentum_encoder(batch["instances"])), dim=1)
    torch.testing.assert_close(keys, expected)


def test_warm_up_contrastive_is_moco_infonce():
    model = small_ins(temperature=0.5)
    model.queue.push(F.normalize(torch.randn(6, 4), dim=1), torch.zeros(6, dtype=torch.long), gather_distributed=False)
    q, k = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(3, 4), dim=1)
    type(model).current_epoch = property(lambda self: 0)
    try:
        loss = model._contrastive(q, k, torch.zeros(3, dtype=torch.long))
    finally:
        del type(model).current_epoch
    queued, _ = model.queue.contents()
    expected = 0.0
    for i in range(3):  # −log exp(q·k_i/τ) / (Σ_j exp(q·k_j/τ) + Σ_queue exp(q·u/τ))
        logits = torch.cat([k @ q[i], queued @ q[i]]) / 0.5
        expected += -(logits[i] - torch.logsumexp(logits, 0)) / 3
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_training_never_sees_instance_truth(lesion_cohort, monkeypatch):
    """Training loaders carry slide labels only, and building them never opens a lesion mask; evaluation
    pieces do carry instance truth."""
    opened = []
    real = LesionMasks.mask
    monkeypatch.setattr(LesionMasks, "mask", lambda self, slide_id: opened.append(slide_id) or real(self, slide_id))
    allowed = {"instances", "index", "slide", "label", "coords", "mask", "slide_id", "views", "tile"}
    for module in (
        InstanceDataModule(
            str(lesion_cohort["cache"]),
            "positive",
            features=str(lesion_cohort["features"]),
            instance_masks=str(lesion_cohort["masks"]),
            num_workers=0,
            batch_size=32,
        ),
        BagDataModule(
            str(lesion_cohort["cache"]),
            "positive",
            features=str(lesion_cohort["features"]),
            instance_masks=str(lesion_cohort["masks"]),
            num_workers=0,
        ),
    ):
        opened.clear()
        module.setup("fit")
        for batch in module.train_dataloader():
            assert set(batch) <= allowed, set(batch) - allowed
        assert not opened
        piece = next(iter(module.val_dataloader()))
        assert "instance_truth" in piece and opened


def test_ins_fits_and_scores_whole_slides_with_a_lightning_trainer(lesion_cohort, tmp_path):
    data = InstanceDataModule(
        str(lesion_cohort["cache"]),
        "positive",
        features=str(lesion_cohort["features"]),
        instance_masks=str(lesion_cohort["masks"]),
        num_workers=0,
        batch_size=64,
        piece_size=100,
    )
    pl.seed_everything(0)
    model = INS(in_dim=lesion_cohort["in_dim"], hidden_dim=64, queue_size=256, prototype_start=1, heatmaps=True)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, data)
    assert len(model.soft_labels) == len(data.datasets["train"])
    seen = ~torch.isnan(model.soft_labels[:, 0])
    assert seen.float().mean() > 0.95  # drop_last leaves out < one batch per epoch
    torch.testing.assert_close(model.soft_labels[seen].sum(1), torch.ones(int(seen.sum())))
    metrics = trainer.test(model, data, verbose=False)[0]
    assert 0.0 <= metrics["test/instance_auroc"] <= 1.0 and metrics["test/slides"] == 4
    results = tmp_path / "lightning_logs" / "version_0" / "results" / "test"
    assert (results / "slides.csv").read_text().count("\n") == 5
    assert len(list((results / "heatmaps").glob("*.png"))) == 4
    assert not math.isnan(float(trainer.callback_metrics["test/bag_auroc"]))


def test_ins_tiles_config_trains_end_to_end_on_pixels(lesion_cohort, tmp_path):
    """configs/mil/ins_tiles.yaml: a ResNet on two views of the tile pixels, through medssl fit."""
    from pathlib import Path

    from medssl.cli import run_lightning

    config = Path(__file__).resolve().parents[2] / "configs" / "mil" / "ins_tiles.yaml"
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(config),
            "--data.init_args.cache",
            str(lesion_cohort["cache"]),
            "--data.init_args.positive_class",
            "positive",
            "--data.init_args.view_size",
            "32",
            "--data.init_args.batch_size",
            "32",
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.piece_size",
            "128",
            "--model.init_args.backbone",
            '{"name": "resnet18", "in_channels": 3, "width": 0.25}',
            "--model.init_args.queue_size",
            "256",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "4",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
        ]
    )
    assert cli.model.encoder.out_dim > 0 and "val/bag_auroc" in cli.trainer.callback_metrics
    seen = ~torch.isnan(cli.model.soft_labels[:, 0])  # one soft label per instance trained on, sized by the indices
    assert int(seen.sum()) == 4 * 32 and len(cli.model.soft_labels) <= len(cli.datamodule.datasets["train"])


def test_two_process_ddp_keeps_one_soft_label_table(lesion_cohort, tmp_path):
    """`--trainer.devices 2 --trainer.strategy ddp` on CPU: each rank trains on its half of the instances,
    and every rank writes every instance's soft label, so after one epoch rank 0's table (the one saved)
    holds nearly all instances, not half."""
    fit_mil_on_two_processes(
        "ins",
        lesion_cohort,
        tmp_path,
        "--data.init_args.batch_size",
        "32",
        "--model.init_args.queue_size",
        "256",
        "--trainer.max_epochs",
        "1",
    )
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    soft = torch.load(checkpoint, weights_only=True)["state_dict"]["soft_labels"]
    assert (~torch.isnan(soft[:, 0])).float().mean() > 0.9
