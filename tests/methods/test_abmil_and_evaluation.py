"""ABMIL's padding masks and piece-by-piece scoring, bag pieces that bound memory, instance truth from
masks, slide metrics by hand, heatmaps, and `medssl heatmap` on a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.cli import main
from medssl.data.bags import BagPieceDataset, SlideBagDataset
from medssl.data.truth import LesionMasks, lesion_fraction
from medssl.errors import InputError
from medssl.eval.slides import slide_metrics
from medssl.methods.abmil import ABMIL
from medssl.viz.heatmaps import colour, heatmap_overlay
from tests.ddp import fit_mil_on_two_processes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_padding_does_not_change_a_bag():
    torch.manual_seed(0)
    model = ABMIL(in_dim=5, hidden_dim=8, attention_dim=4).eval()
    short, long = torch.randn(3, 5), torch.randn(7, 5)
    padded = torch.zeros(2, 7, 5)
    padded[0, :3], padded[1] = short, long
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :3], mask[1] = True, True
    logits, attention = model(padded, mask)
    alone, alone_attention = model(short[None])
    torch.testing.assert_close(logits[0], alone[0])
    torch.testing.assert_close(attention[0, :3], alone_attention[0])
    assert float(attention[0, 3:].abs().sum()) == 0.0  # padding gets no attention


def test_piece_by_piece_scoring_equals_one_pass():
    torch.manual_seed(0)
    model = ABMIL(in_dim=6).eval()
    bag = torch.randn(1000, 6) * 3
    with torch.no_grad():
        logits, attention = model(bag[None])
    probability, scores = model.score_bag(bag, piece_size=97)
    assert probability == pytest.approx(float(torch.softmax(logits, -1)[0, 1]), abs=1e-6)
    torch.testing.assert_close(torch.softmax(scores, 0), attention[0], atol=1e-7, rtol=1e-5)  # scores: logits


def test_abmil_names_a_wrong_embedding_width():
    with pytest.raises(ValueError, match="in_dim=8"):
        ABMIL(in_dim=8).score_bag(torch.randn(4, 6))


def test_bag_pieces_bound_memory_and_cover_each_bag_once(lesion_cohort):
    bags = SlideBagDataset(lesion_cohort["cache"], features=lesion_cohort["features"])
    pieces = BagPieceDataset(bags, piece_size=50)
    seen: dict[str, list] = {}
    for index in range(len(pieces)):
        piece = pieces[index]
        assert len(piece["instances"]) <= 50
        seen.setdefault(piece["slide_id"], []).append(piece)
    for position, slide_id in enumerate(bags.slide_ids):
        parts = seen[slide_id]
        assert [p["start"] for p in parts] == list(range(0, bags.size(position), 50))
        assert [p["last"] for p in parts] == [False] * (len(parts) - 1) + [True]
        torch.testing.assert_close(torch.cat([p["instances"] for p in parts]), bags[position]["instances"])
    with pytest.raises(ValueError, match="piece_size"):
        BagPieceDataset(bags, piece_size=0)


def test_lesion_fraction_by_hand():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0:2, 0:2] = True  # the top-left quarter of a 400 × 400 slide
    coords = np.array([[0, 0], [100, 0], [200, 200], [150, 150], [50, 50]])
    fraction = lesion_fraction(mask, coords, tile_level0=100, dimensions=(400, 400))
    np.testing.assert_allclose(fraction, [1.0, 1.0, 0.0, 0.25, 1.0])  # a quarter of [150, 250)² is lesion


def test_lesion_masks_missing_and_unreadable(tmp_path):
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "s1.png")
    (tmp_path / "broken.png").write_text("not a png")
    masks = LesionMasks(tmp_path)
    meta = {"slide_id": "s1", "dimensions": [400, 400], "tile_size_level0": 100}
    assert masks.instance_truth(meta, np.zeros((2, 2)), bag_label=1).tolist() == [1.0, 1.0]
    absent = {**meta, "slide_id": "s2"}
    assert masks.instance_truth(absent, np.zeros((2, 2)), bag_label=0).tolist() == [0.0, 0.0]  # negative slide
    assert np.isnan(masks.instance_truth(absent, np.zeros((2, 2)), bag_label=1)).all()  # unknown
    with pytest.raises(InputError, match="broken.png"):
        masks.instance_truth({**meta, "slide_id": "broken"}, np.zeros((1, 2)), bag_label=1)
    with pytest.raises(InputError, match="no such mask folder"):
        LesionMasks(tmp_path / "nowhere")


def test_slide_metrics_by_hand():
    records = [
        {"label": 0, "probability": 0.2, "scores": torch.tensor([0.1, 0.3]), "truth": torch.tensor([0.0, 0.0])},
        {"label": 0, "probability": 0.7, "scores": torch.tensor([0.2]), "truth": torch.tensor([0.0])},
        {
            "label": 1,
            "probability": 0.6,
            "scores": torch.tensor([0.9, 0.05]),
            "truth": torch.tensor([1.0, float("nan")]),
        },
        {"label": 1, "probability": 0.9, "scores": torch.tensor([0.4]), "truth": None},
    ]
    metrics = slide_metrics(records)
    assert metrics["bag_auroc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered right
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)  # sensitivity 1, specificity 0.5
    assert metrics["instance_auroc"] == pytest.approx(1.0)  # the NaN instance is left out
    assert metrics["instance_auroc_per_slide"] is None  # no positive slide has both kinds of instance
    mixed = {"label": 1, "probability": 0.8, "scores": torch.tensor([0.5, 0.7, 0.6])}
    mixed["truth"] = torch.tensor([1.0, 0, 0])
    other = {"label": 1, "probability": 0.8, "scores": torch.tensor([9.0, 1.0]), "truth": torch.tensor([1.0, 0])}
    # within each slide: 0 of 2 and 1 of 1 lesion-normal pairs ordered right, mean 0.5
    both = slide_metrics([*records, mixed, other])
    assert both["instance_auroc_per_slide"] == pytest.approx(0.5)
    assert slide_metrics(records[:2])["bag_auroc"] is None  # one class only


def test_heatmap_colours_tiles_by_score():
    thumbnail = np.full((40, 80, 3), 230, np.uint8)
    boxes = np.array([[0, 0, 40, 40], [40, 0, 80, 40]])
    image = np.asarray(heatmap_overlay(thumbnail, boxes, np.array([0.0, 1.0]), longest_side=80))
    cold, hot = image[20, 20].astype(int), image[20, 60].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue where low, red where high
    assert image.shape[0] > 40  # a colour bar underneath
    np.testing.assert_array_equal(colour(np.array([0.0, 1.0])), [[40, 60, 200], [215, 40, 30]])


def test_medssl_heatmap_draws_every_slide_from_a_checkpoint(lesion_cohort, tmp_path):
    import lightning.pytorch as pl

    from medssl.data.datamodules import BagDataModule

    data = BagDataModule(
        str(lesion_cohort["cache"]), "positive", features=str(lesion_cohort["features"]), num_workers=0
    )
    model = ABMIL(in_dim=lesion_cohort["in_dim"])
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    checkpoint = tmp_path / "abmil.ckpt"
    trainer.save_checkpoint(checkpoint)
    out = tmp_path / "maps"
    status = main(
        [
            "heatmap",
            str(checkpoint),
            "--cache",
            str(lesion_cohort["cache"]),
            "--features",
            str(lesion_cohort["features"]),
            "--out",
            str(out),
            "--split",
            "test",
            "--piece-size",
            "64",
        ]
    )
    assert status == 0
    pictures = sorted(p.stem for p in out.glob("*.png"))
    assert len(pictures) == 4
    rows = (out / "scores" / f"{pictures[0]}.csv").read_text().splitlines()
    assert rows[0] == "x,y,attention_logit"
    logits = np.array([float(r.split(",")[2]) for r in rows[1:]])
    assert abs(logits.sum() - 1.0) > 1e-3  # logits (their softmax is the attention), not the weights
    assert (
        main(
            [
                "heatmap",
                str(lesion_cohort["masks"] / f"{pictures[0]}.png"),
                "--cache",
                str(lesion_cohort["cache"]),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )  # not a checkpoint: a clear error, not a traceback


def test_two_process_ddp_evaluates_every_validation_slide(lesion_cohort, tmp_path):
    """Under DDP each rank trains on its share of the bags, but every rank scores every validation slide
    (slide metrics are not a mean over ranks), so rank 0's results name each validation slide once."""
    import csv
    import json

    fit_mil_on_two_processes(
        "abmil",
        lesion_cohort,
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--data.init_args.instance_masks",
        str(lesion_cohort["masks"]),
    )
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1
    (results,) = tmp_path.rglob("results/val")
    with open(results / "slides.csv") as handle:
        scored = [row["slide_id"] for row in csv.DictReader(handle)]
    val = SlideBagDataset(lesion_cohort["cache"], features=lesion_cohort["features"], splits=["val"])
    assert sorted(scored) == sorted(val.slide_ids) and len(scored) == len(set(scored))
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["instance_auroc"] is not None
