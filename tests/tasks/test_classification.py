"""Classification fine-tuning: it learns from real pixels, its metrics match hand computations, its
DataModule splits by case and refuses bad labels by name, and two-process DDP reports the metrics a
single process computes on the same checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medssl.cli import run_lightning
from medssl.data import ClassificationDataModule
from medssl.data.splits import label_fraction
from medssl.errors import InputError
from medssl.eval.classification import classification_metrics, confusion_metrics
from medssl.export.encoders import export_encoder
from medssl.nn.backbones import build_encoder
from medssl.preprocess import TilingParams, tile_slides
from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide
from medssl.tasks.classification import Classifier
from tests.ddp import fit_on_two_started_processes
from tests.trainers import quiet_trainer, toy_arguments

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
HALVES = {"train": 0.5, "val": 0.5}
RESNET = {"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.25}


@pytest.fixture(scope="module")
def texture_cohort(tmp_path_factory) -> Path:
    """32-px tiles (1 µm/px) of 10 small slides of real pixels: IHC tissue (``tissue``) or retina
    texture (``lesion``), at different texture scales; 8 cases, two of which have two slides."""
    folder = tmp_path_factory.mktemp("texture-cohort")
    rows = ["slide_id,path,label,case_id"]
    for k in range(10):
        layout = SlideLayout(
            768,
            768,
            tissue=[Ellipse(384 + 8 * k, 384, 360, 360)],
            tissue_texture="retina" if k % 2 else "ihc",
            texture_zoom=0.5 + 0.25 * (k % 4),
        )
        path = write_slide(folder / f"s{k}.tiff", layout, mpp=0.25, downsamples=(1, 4))
        rows.append(f"s{k},{path},{'lesion' if k % 2 else 'tissue'},case-{k % 8}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    summary = tile_slides(
        [folder / "cohort.csv"], folder / "cache", TilingParams(target_mpp=1.0, tile_size=32), progress=False
    )
    assert not summary.failed
    return folder / "cache"


def datamodule(cache: Path, **options) -> ClassificationDataModule:
    module = ClassificationDataModule(str(cache), **{"batch_size": 16, "num_workers": 0, **options})
    module.setup("fit")
    return module


# -- learning and results ---------------------------------------------------------------------------
def test_a_small_resnet_learns_tissue_from_lesion_on_held_out_cases(texture_cohort, tmp_path):
    data = ClassificationDataModule(str(texture_cohort), split_fractions=HALVES, batch_size=16, num_workers=0)
    torch.manual_seed(0)
    model = Classifier(num_classes=2, backbone=RESNET, lr=1e-3)
    trainer = quiet_trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert float(metrics["val/auroc"]) > 0.8  # chance: 0.5 (the threshold-0.5 figures lag after 3 epochs)
    assert {"val/auroc_lesion", "val/auroc_tissue", "val/f1"} <= metrics.keys() and "val/kappa" not in metrics
    assert model.classes == ["lesion", "tissue"]
    val = data.datasets["val"]
    assert val is not None
    written = json.loads((tmp_path / "results" / "val" / "metrics.json").read_text())
    assert written["auroc"] == pytest.approx(float(metrics["val/auroc"])) and written["samples"] == len(val)
    with open(tmp_path / "results" / "val" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sample_id"] for r in rows] == [val.sample_id(k) for k in range(len(val))]
    val_cases = {case for case, split in data.case_splits.items() if split == "val"}
    assert {r["case_id"] for r in rows} == val_cases
    assert all(abs(float(r["p_lesion"]) + float(r["p_tissue"]) - 1) < 1e-5 for r in rows)


def test_metrics_of_a_known_prediction_set_match_a_hand_computation():
    # true \ predicted  g0  g1  g2
    #   g0               3   1   0
    #   g1               1   2   1
    #   g2               0   0   2
    confusion = torch.tensor([[3, 1, 0], [1, 2, 1], [0, 0, 2]])
    truth = [t for t in range(3) for p in range(3) for _ in range(int(confusion[t, p]))]
    guess = [p for t in range(3) for p in range(3) for _ in range(int(confusion[t, p]))]
    probabilities = torch.full((len(truth), 3), 0.1)
    probabilities[torch.arange(len(truth)), torch.tensor(guess)] = 0.8
    metrics = classification_metrics(probabilities, torch.tensor(truth), ["g0", "g1", "g2"], ordinal=True)
    recall = [3 / 4, 2 / 4, 2 / 2]
    f1 = [2 * 3 / (4 + 4), 2 * 2 / (4 + 3), 2 * 2 / (2 + 3)]  # 2TP / (support + predicted)
    assert metrics["balanced_accuracy"] == pytest.approx(sum(recall) / 3)
    assert metrics["f1"] == pytest.approx(sum(f1) / 3)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    # quadratic kappa: 1 - Σ w·O / Σ w·E with w = (i - j)² / 4, E = row total × column total / n
    rows, columns, n = [4, 4, 2], [4, 3, 3], 10
    observed = sum((i - j) ** 2 / 4 * int(confusion[i, j]) for i in range(3) for j in range(3))
    expected = sum((i - j) ** 2 / 4 * rows[i] * columns[j] / n for i in range(3) for j in range(3))
    assert metrics["kappa"] == pytest.approx(1 - observed / expected, abs=1e-6)
    # g2 (2 samples) scored 0.8 by its own column only where predicted g2: both g2 samples (0.8) outrank the
    # 8 others, of which 1 (a g1 predicted g2) ties at 0.8: AUROC = (2·7 + 2·1·0.5) / (2·8)
    assert metrics["auroc_g2"] == pytest.approx((2 * 7 + 1) / 16)
    absent = confusion_metrics(torch.tensor([[2, 0, 1], [0, 0, 0], [1, 0, 3]]))  # class 1 neither occurs nor predicted
    assert absent["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)


# -- the DataModule ---------------------------------------------------------------------------------
def test_cases_never_straddle_splits_and_label_fractions_are_nested_and_stratified(texture_cohort):
    data = datamodule(texture_cohort, split_fractions=HALVES)
    seen: dict[str, str] = {}
    for split in ("train", "val"):
        dataset = data.datasets[split]
        assert dataset is not None
        for k in range(len(dataset)):
            slide = dataset.item_ids[int(dataset.items[k])]
            case = f"case-{int(slide[1:]) % 8}"  # the cohort's truth: s8 and s9 join cases 0 and 1
            assert dataset.case_ids[int(dataset.items[k])] == case and seen.setdefault(case, split) == split
    assert len(seen) == 8 and data.datasets["test"] is None
    train = data.datasets["train"]
    assert train is not None and set(train.labels.tolist()) == {0, 1}
    cases = {f"c{k}": "ab"[k % 2] for k in range(40)}
    subsets = [set(label_fraction(cases, f, seed=3)) for f in (0.1, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in zip(subsets, subsets[1:]))
    assert [sum(cases[c] == "a" for c in s) for s in subsets] == [2, 5, 10, 20]
    half = datamodule(texture_cohort, split_fractions=HALVES, label_fraction=0.5)
    half_train = half.datasets["train"]
    assert half_train is not None and set(half_train.labels.tolist()) == {0, 1}
    assert set(half_train.case_ids) < set(train.case_ids)


def test_labels_from_a_csv_and_tile_level_labels(texture_cohort, tmp_path):
    by_case = tmp_path / "cases.csv"
    by_case.write_text("case_id,label\n" + "".join(f"case-{k},{'high' if k % 2 else 'low'}\n" for k in range(8)))
    data = datamodule(texture_cohort, labels_csv=str(by_case), classes=["low", "high"], split_fractions=HALVES)
    assert data.classes == ["low", "high"] and data.class_counts().sum() == len(data.datasets["train"] or [])
    tiles = tmp_path / "tiles.csv"
    tiles.write_text("slide_id,tile,label\n" + "".join(f"s{k},0,{'a' if k % 2 else 'b'}\n" for k in range(10)))
    data = datamodule(texture_cohort, labels_csv=str(tiles), drop_unlabelled=True, split_fractions=HALVES)
    train = data.datasets["train"]
    assert train is not None and all(train.sample_id(k).endswith(":0") for k in range(len(train)))
    with pytest.raises(InputError, match=r"s0 \(\d+ of \d+ tiles\).*drop_unlabelled"):
        datamodule(texture_cohort, labels_csv=str(tiles), split_fractions=HALVES)


@pytest.mark.parametrize(
    "csv_text, options, message",
    [
        (
            None,
            {"classes": ["tissue", "tumour"]},
            r"unknown class names \['lesion'\].*classes are \['tissue', 'tumour'\]",
        ),
        ("slide_id,label\ns0,tissue\ns99,lesion\n", {}, r"slide_id s99 not in the cache"),
        ("slide_id,label\ns0,tissue\ns1,lesion\n", {}, r"no label for 8 item\(s\): s2, s3"),
        (None, {"split_fractions": {"train": 1.0, "val": 0.0}}, r"the val split is empty"),
        (
            "case_id,label\n" + "".join(f"case-{k},{'rare' if k == 7 else 'common'}\n" for k in range(8)),
            {"split_fractions": {"val": 0.5, "train": 0.5}},
            r"the train split has no samples of class \['rare'\]",
        ),
    ],
    ids=["unknown-class", "csv-id-not-in-cache", "unlabelled", "empty-split", "class-missing-in-train"],
)
def test_bad_labels_and_splits_are_refused_by_name(texture_cohort, tmp_path, csv_text, options, message):
    if csv_text is not None:
        (tmp_path / "labels.csv").write_text(csv_text)
        options = {**options, "labels_csv": str(tmp_path / "labels.csv")}
    with pytest.raises(InputError, match=message):
        datamodule(texture_cohort, **{"split_fractions": HALVES, **options})


# -- two-process DDP ----------------------------------------------------------------------------------
def test_two_process_ddp_reports_the_metrics_of_a_single_process_evaluation(texture_cohort, tmp_path):
    """configs/finetune/classification/tiles.yaml at toy size under 2-process DDP: each rank trains on
    its share, every rank evaluates every validation tile; ``medssl validate`` on the checkpoint in one
    process then logs the same metrics."""
    encoder = build_encoder(**RESNET)
    export_encoder(encoder, tmp_path / "encoder.pt")
    config = ROOT / "configs" / "finetune" / "classification" / "tiles.yaml"
    toy = toy_arguments(
        config,
        texture_cohort,
        "--model.init_args.encoder",
        str(tmp_path / "encoder.pt"),
        "--data.init_args.split_fractions",
        json.dumps(HALVES),
        "--data.init_args.batch_size",
        "8",
    )
    fit_on_two_started_processes(["fit", *toy, "--trainer.default_root_dir", str(tmp_path / "ddp")])
    (checkpoint,) = (tmp_path / "ddp").rglob("*.ckpt")
    (results,) = (tmp_path / "ddp").rglob("results/val/metrics.json")
    ddp = json.loads(results.read_text())
    assert torch.load(checkpoint, weights_only=False)["medssl_classes"] == ["lesion", "tissue"]
    single = tmp_path / "single"
    extra = ["--trainer.default_root_dir", str(single), "--trainer.devices", "1", "--trainer.accelerator", "cpu"]
    cli = run_lightning(["validate", *toy, *extra, "--ckpt_path", str(checkpoint)])
    logged = {k.split("/", 1)[1]: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"auroc", "auroc_lesion", "balanced_accuracy", "f1"} <= logged.keys()
    for name, value in logged.items():
        assert ddp[name] == pytest.approx(value, abs=1e-6), name
    val = cli.datamodule.datasets["val"]
    assert ddp["samples"] == len(val)  # every validation tile once, not a rank's half


def test_cases_with_tile_level_labels_are_stratified_by_their_rarest_class():
    """A lesion slide is mostly normal tiles; it must still count as a lesion case, so that a label
    fraction or a split of the cases keeps lesion tiles (by the majority label it would not)."""
    from medssl.data.datamodules.classification import Item, case_classes

    def slide(name: str, lesions: int) -> Item:
        labels = [(k, "lesion" if k < lesions else "normal") for k in range(100)]
        return Item(name, name, 100, labelled=labels)

    cases = {f"s{k}": [slide(f"s{k}", 10 if k % 2 else 0)] for k in range(8)}
    classes = case_classes(cases)
    assert classes == {f"s{k}": "lesion" if k % 2 else "normal" for k in range(8)}
    kept = label_fraction(classes, 0.01, seed=0)
    assert {classes[c] for c in kept} == {"lesion", "normal"}
