"""The medssl demo: tile a small cohort of slides made from real stained-tissue pixels, cache a real MRI
volume (shipped with nibabel) and a CT phantom, pretrain SimCLR briefly on the tiles (``medssl fit``),
compare it with random initialisation (RankMe, kNN), write tile embeddings (``medssl embed``), then
train ABMIL and INS on them from slide labels (lesion / clean) and score held-out slides: bag AUROC,
instance AUROC against the lesion masks, and heatmaps (``medssl heatmap``); then fine-tune the
pretrained encoder to classify tiles as lesion or normal (tile labels from the masks) beside a random
initialisation of the same network, from half and from all of the training slides, and test them on the
held-out slides; then pretrain the joint 2D/3D method briefly on the three cached volumes and write their
volume embeddings (``medssl embed``), and pretrain Alice briefly on them and export its SwinUNETR
(``medssl export``), which is fine-tuned to segment the lungs of one CT phantom, tested on the other and
written over the original scans (``medssl segment``); last, pretrain MADELEINE briefly on a small
multistain cohort (H&E and IHC slides of the same cases) and print a few-shot table of its H&E slide
embeddings beside mean pooling and ABMIL.

Run through ``bash pipelines/demo.sh`` (which installs first) or, in an installed environment,
``python pipelines/demo.py --out demo-output``. Re-running resumes: finished slides are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medssl.cli import main as medssl_main
from medssl.synthetic.slides import write_demo_cohort
from medssl.synthetic.volumes import ct_phantom, grid_affine, nibabel_data, write_nifti

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "simclr_tiles.yaml"


STEPS = 11
FINETUNE = CONFIG.parents[1] / "finetune" / "classification" / "tiles.yaml"
SEGMENTATION = CONFIG.parents[1] / "finetune" / "segmentation_3d" / "swin_unetr_patches.yaml"
JOINT = CONFIG.parent / "joint_2d3d.yaml"
ALICE = CONFIG.parent / "alice.yaml"
# Label fractions count training slides, at least one per class: the demo's 4 training slides (2 per class)
# give 2 or 4 (the tiny 4-slide cohort's 2 give 2 at both). Every run takes the same steps of FINETUNE_BATCH
# tiles, small enough that the four runs cost what two runs of 32 tiles did.
FRACTIONS = (0.5, 1.0)
FINETUNE_BATCH = 16
# The lung cache: 3 × 3 × 4.8 mm (x, y, z), coarser than the pretraining cache, so a 32×64×64 patch holds a
# whole cross-section of the body and each step is cheap; a lung window (-1350 to 150 HU → 0..1), because
# the default CT normalisation clips everything below the body's 0.5th percentile (lungs and air) to one value.
LUNG_CACHE = ["--spacing", "3", "3", "4.8", "--ct-norm", "window", "--ct-window", "-1350", "150"]
TINY = {  # --tiny: the whole path in a minute or two; the figures mean nothing at this size
    "slides": 4,
    "epochs": 1,
    "mil_epochs": 2,
    "finetune_steps": 2,
    "joint_epochs": 1,
    "alice_epochs": 1,
    "madeleine_epochs": 1,
}


def run(
    out: Path,
    n_slides: int,
    epochs: int,
    mil_epochs: int,
    finetune_steps: int,
    joint_epochs: int,
    alice_epochs: int,
    madeleine_epochs: int,
) -> int:
    cohort = write_slide_inputs(out / "slides", n_slides)
    print(f"[2/{STEPS}] medssl tile --mpp 0.5 --tile-size 224")
    status = medssl_main(
        ["tile", str(cohort), "--out", str(out / "cache"), "--mpp", "0.5", "--tile-size", "224", "--workers", "2"]
    )
    print(f"[3/{STEPS}] medssl cache-volumes: nibabel's anatomical.nii (MRI) and two CT phantoms; the phantoms again")
    manifest = write_volume_inputs(out / "volumes")
    status |= medssl_main(["cache-volumes", str(manifest), "--out", str(out / "volume-cache")])
    lungs = write_lung_inputs(out / "volumes")  # segmentation needs every volume labelled, and a split
    status |= medssl_main(["cache-volumes", str(lungs), "--out", str(out / "lung-cache"), *LUNG_CACHE])
    config = CONFIG.relative_to(CONFIG.parents[2])
    print(f"[4/{STEPS}] medssl fit --config {config} (SimCLR, {epochs} short epochs on CPU)")
    checkpoint = pretrain(out, epochs)
    print(f"[5/{STEPS}] medssl embed")
    status |= medssl_main(
        [
            "embed",
            str(checkpoint),
            "--cache",
            str(out / "cache"),
            "--out",
            str(out / "embeddings"),
            "--quiet",
            "--overwrite",
        ]
    )  # a re-run's fresh checkpoint replaces the last one's features
    print(
        f"[6/{STEPS}] medssl fit --config configs/mil/abmil.yaml and configs/mil/ins.yaml ({mil_epochs} epochs, "
        "slide labels only)"
    )
    status |= slide_models(out, checkpoint, mil_epochs)
    print(f"[7/{STEPS}] medssl fit --config configs/finetune/classification/tiles.yaml (lesion vs normal tiles)")
    finetune(out, checkpoint, finetune_steps)
    print(f"[8/{STEPS}] medssl fit --config configs/pretrain/joint_2d3d.yaml (joint 2D/3D on the 3 volumes)")
    status |= joint_2d3d(out, joint_epochs)
    print(f"[9/{STEPS}] medssl fit --config configs/pretrain/alice.yaml (Alice on the 3 volumes) and medssl export")
    status |= alice(out, alice_epochs)
    print(
        f"[10/{STEPS}] medssl fit --config configs/finetune/segmentation_3d/swin_unetr_patches.yaml (lungs, from "
        "Alice's SwinUNETR) and medssl segment"
    )
    status |= segment_lungs(out, max(1, finetune_steps // 2))
    print(f"[11/{STEPS}] MADELEINE: multistain slides → medssl tile, embed, fit, embed-slides → few-shot table")
    multistain(out / "multistain", madeleine_epochs)
    print(f"\nQC pictures: {out / 'cache' / 'qc'} (tiles over thumbnails), {out / 'volume-cache' / 'qc'} (volumes)")
    print(f"Inspect the caches: medssl info {out / 'cache'}; medssl info {out / 'volume-cache'}")
    return status


def write_slide_inputs(folder: Path, n_slides: int) -> Path:
    """Demo slides, their lesion masks, and a CSV giving each a label (odd slides carry lesions) and a split:
    half train, a quarter val, a quarter test, each split with both labels."""
    print(f"[1/{STEPS}] demo slides (40×, 0.25 µm/px, JPEG pyramids) and lesion masks in {folder}")
    paths = write_demo_cohort(folder, n_slides=n_slides, lesions=6)
    rows = ["slide_id,path,label,split"]
    for k, path in enumerate(paths):
        split = "train" if k < n_slides // 2 else ("val" if k < 3 * n_slides // 4 else "test")
        rows.append(f"{path.name.split('.')[0]},{path.name},{'lesion' if k % 2 else 'clean'},{split}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def pretrain(out: Path, epochs: int) -> Path:
    """SimCLR through LightningCLI at demo size, then the same validation for random initialisation."""
    import lightning.pytorch as pl

    from medssl.cli import run_lightning

    cli = run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.init_args.cache",
            str(out / "cache"),
            "--data.init_args.batch_size",
            "32",
            "--data.init_args.view_size",
            "96",
            "--data.init_args.num_workers",
            "1",
            "--model.init_args.backbone",
            '{"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.5}',
            "--model.init_args.proj_hidden_dim",
            "512",
            "--model.init_args.warmup_epochs",
            "1",
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.check_val_every_n_epoch",
            str(epochs),
            "--trainer.default_root_dir",
            str(out / "runs" / "simclr"),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    trained = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    pl.seed_everything(0)
    random_init = type(cli.model)(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    baseline = cli.trainer.validate(random_init, datamodule=cli.datamodule, verbose=False)[0]
    print(f"\n{'validation tiles':<22}{'RankMe':>10}{'kNN accuracy':>15}{'linear probe':>15}")
    for name, metrics in (("random init", baseline), ("SimCLR pretrained", trained)):
        labelled = [metrics.get(f"val/{key}") for key in ("knn_accuracy", "linear_probe_accuracy")]
        print(
            f"{name:<22}{metrics['val/rankme']:>10.1f}"
            + "".join(f"{'' if value is None else f'{value:.3f}':>15}" for value in labelled)
        )
    print(
        "(kNN leave-one-out and a 2-fold linear probe over validation tiles with their slide's label,\n"
        " lesion/clean; a few dozen steps on about a hundred tiles only show the path works)\n"
    )
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def slide_models(out: Path, checkpoint: Path, epochs: int) -> int:
    """ABMIL and INS on the embeddings (``pipelines/mil_experiment.py``'s runner), tested on the test slides,
    then ``medssl heatmap`` for each."""
    from mil_experiment import fit_and_test, print_table

    from medssl.export.encoders import load_encoder

    cohort = {
        "cache": out / "cache",
        "features": out / "embeddings",
        "masks": out / "slides" / "masks",
        "in_dim": load_encoder(checkpoint).out_dim,
        "positive_class": "lesion",  # write_slide_inputs labels slides lesion / clean
    }
    rows = {
        "ABMIL": fit_and_test("abmil", cohort, out, epochs, ["--model.init_args.lr", "5e-4"]),
        "INS": fit_and_test(
            "ins",
            cohort,
            out,
            epochs,
            ["--model.init_args.prototype_start", str(max(1, epochs // 4)), "--model.init_args.queue_size", "1024"],
        ),
    }
    print_table(rows)
    print(
        "(2 test slides and a few dozen tiles each: the figures only show the path works; "
        "pipelines/mil_experiment.py runs a real comparison)"
    )
    status = 0
    for name, metrics in rows.items():
        checkpoints = sorted((Path(metrics["results"]).parents[1] / "checkpoints").glob("*.ckpt"))
        maps = out / "heatmaps" / name.lower()
        status |= medssl_main(
            [
                "heatmap",
                str(checkpoints[-1]),
                "--cache",
                str(out / "cache"),
                "--features",
                str(out / "embeddings"),
                "--split",
                "test",
                "--stretch",
                "--out",
                str(maps),
            ]
        )
    return status


def finetune(out: Path, checkpoint: Path, steps: int) -> None:
    """Tile classification, lesion vs normal (tile labels from the lesion masks), fine-tuned from the SimCLR
    encoder and from a random initialisation of it at each of ``FRACTIONS`` of the training slides, with
    the same steps (``pipelines/label_efficiency.py``'s grid at one seed); test metrics on the test slides,
    in ``runs/finetune/results.csv`` and ``summary.csv`` (label_efficiency's tables)."""
    from label_efficiency import run_grid, write_tables

    from medssl.data.truth import write_tile_labels

    labels = write_tile_labels(
        out / "cache", out / "slides" / "masks", out / "tile_labels.csv", negative_slide_label="clean"
    )
    data = {"cache": out / "cache", "labels_csv": labels}
    root = out / "runs" / "finetune"
    rows = run_grid("tiles", data, checkpoint, root, FRACTIONS, [0], steps, FINETUNE_BATCH, verbose=False)
    write_tables(root, rows)
    value = {(r["init"], r["fraction"], r["metric"]): r["value"] for r in rows}
    print(f"\n{'test tiles, lesion vs normal':<30}{'labels':>8}{'AUROC':>8}{'balanced accuracy':>20}{'F1':>8}")
    for init, name in (("random", "random init"), ("pretrained", "SimCLR pretrained")):
        for fraction in FRACTIONS:
            metrics = [value[init, fraction, f"test/{m}"] for m in ("auroc", "balanced_accuracy", "f1")]
            print(f"{name:<30}{fraction:>8.0%}{metrics[0]:>8.3f}{metrics[1]:>20.3f}{metrics[2]:>8.3f}")
    print(
        f"(full fine-tuning, {steps} steps of {FINETUNE_BATCH} tiles from a share of the training slides "
        "(labels), at least one\n per class; pipelines/label_efficiency.py compares the two over label fractions "
        "and seeds)\n"
    )


def segment_lungs(out: Path, steps: int) -> int:
    """3D segmentation of the lungs from Alice's SwinUNETR (``alice-encoder.pt``, every weight used), fine-
    tuned for ``steps`` steps on 32×64×64 patches of ``ct-phantom`` and tested on ``ct-phantom-2`` (the
    lung cache's splits), then ``medssl segment`` of both onto their original scans (``segmentation/``)."""
    import csv

    from label_efficiency import fit_and_test

    root = out / "runs" / "segmentation-3d"
    settings = ["--model.init_args.num_classes", "2", "--model.init_args.class_names", "[background, lungs]"]
    settings += ["--model.init_args.lr", "3e-3", "--data.init_args.spatial_size", "[32, 64, 64]"]
    encoder, checkpoint = out / "alice-encoder.pt", root / "final.ckpt"  # medssl segment reads the checkpoint
    cache = out / "lung-cache"
    fit_and_test(
        SEGMENTATION, cache, encoder, "pretrained", steps, root, extra=settings, batch_size=1, checkpoint=checkpoint
    )
    predictions = out / "segmentation"
    status = medssl_main(
        ["segment", str(checkpoint), "--cache", str(cache), "--out", str(predictions), "--quiet", "--overwrite"]
    )  # --overwrite: a re-run's checkpoint may be new
    print(f"\n{'lungs, case':<22}{'split':>8}{'Dice':>8}{'IoU':>8}{'HD95 (mm)':>11}")
    for row in csv.DictReader((predictions / "metrics.csv").open()):
        dice, iou, hd95 = (float(row[k]) if row[k] else float("nan") for k in ("dice", "iou", "hd95"))
        print(f"{row['volume_id']:<22}{row['split']:>8}{dice:>8.3f}{iou:>8.3f}{hd95:>11.1f}")
    print(
        f"(Alice's SwinUNETR fine-tuned for {steps} steps of one 32×64×64 patch of one phantom, tested on the\n"
        f" other; phantom lungs are an easy target. Predictions over the original scans: {predictions})\n"
    )
    return status


def joint_2d3d(out: Path, epochs: int) -> int:
    """The joint 2D/3D method at demo size (stacks of 16 slices of 64², a narrow ResNet-18 f_intra, a
    2-layer f_inter, DeepCluster with 2 clusters per head; batches of 2 of the 3 volumes), then ``medssl
    embed`` of the volume encoder: one token per axial slice and the volume embedding Z per volume."""
    import zarr

    from medssl.cli import run_lightning

    root = out / "runs" / "joint-2d3d"
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(JOINT),
            "--data.init_args.cache",
            str(out / "volume-cache"),
            "--data.init_args.spatial_size",
            "[16, 64, 64]",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.backbone",
            '{"name": "resnet18", "spatial_dims": 2, "in_channels": 1, "width": 0.5}',
            "--model.init_args.d_model",
            "128",
            "--model.init_args.transformer",
            '{"layers": 2, "ffn_dim": 256, "heads": 4}',
            "--model.init_args.proj_hidden_dim",
            "256",
            "--model.init_args.intra_prototypes",
            "64",
            "--model.init_args.inter_clusters",
            "[2, 2, 2]",
            "--model.init_args.optimizer",
            "adamw",
            "--model.init_args.lr",
            "1e-3",
            "--model.init_args.weight_decay",
            "1e-4",
            "--model.init_args.warmup_epochs",
            "2",
            "--model.init_args.freeze_prototypes_steps",
            "5",
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    print_first_and_last_losses(root, "joint 2D/3D", ("intra", "inter", "mask", "loss"))
    checkpoint = Path(cli.trainer.checkpoint_callback.best_model_path)
    embeddings = out / "volume-embeddings"
    status = medssl_main(
        ["embed", str(checkpoint), "--cache", str(out / "volume-cache"), "--out", str(embeddings)]
        + ["--encoder", "volume_encoder", "--quiet", "--overwrite"]
    )
    group = zarr.open_group(str(embeddings / "cache.zarr"), mode="r")["embeddings"]
    for volume_id in sorted(group.group_keys()):
        tokens, z = group[volume_id]["features"], group[volume_id]["volume"]
        print(f"{volume_id:<22}slice tokens {tuple(tokens.shape)}, volume embedding Z {tuple(z.shape)}")
    print(
        f"(the demo's three volumes only show the path: {epochs} steps of L_intra + L_inter + L_mask, then the\n"
        " volume encoder over whole volumes; pipelines/joint_2d3d_experiment.py measures what it learns)\n"
    )
    return status


def print_first_and_last_losses(root: Path, title: str, names: tuple[str, ...]) -> None:
    """The first and last logged ``train/<name>`` values of the newest run under ``root`` (its CSV log)."""
    import csv

    logged = max(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime, default=None)
    if logged is None:
        return
    rows = [r for r in csv.DictReader(logged.open()) if r.get("train/loss")]
    first, last = rows[0], rows[-1]
    names = tuple(n for n in names if first.get(f"train/{n}"))
    print(f"\n{title + ', step':<22}" + "".join(f"{n:>10}" for n in names))
    for row in (first, last):
        print(f"{row['step']:<22}" + "".join(f"{float(row[f'train/{n}']):>10.3f}" for n in names))


def alice(out: Path, epochs: int) -> int:
    """Alice at demo size (a SwinUNETR of feature size 12 with one block per stage, crops of 32×64×64
    from the two cached volumes, same-volume correspondences), then ``medssl export`` of the teacher:
    the encoder file the 3D segmentation task (configs/finetune/segmentation_3d/swin_unetr_patches.yaml)
    fine-tunes."""
    from medssl.cli import run_lightning

    root = out / "runs" / "alice"
    swin = '{"in_channels": 1, "feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4}'
    cli = run_lightning(
        [
            *("fit", "--config", str(ALICE), "--data.init_args.cache", str(out / "volume-cache")),
            *("--data.init_args.spatial_size", "[32, 64, 64]", "--data.init_args.batch_size", "2"),
            *("--data.init_args.num_workers", "0", "--model.init_args.backbone", swin),
            *("--model.init_args.out_dim", "128", "--model.init_args.patch_out_dim", "128"),
            *("--model.init_args.head_hidden_dim", "256", "--model.init_args.bottleneck_dim", "64"),
            *("--model.init_args.casa_heads", "4", "--model.init_args.warmup_epochs", "2"),
            *("--model.init_args.warmup_teacher_epochs", "2", "--model.init_args.lr", "1e-3"),
            *("--trainer.max_epochs", str(epochs), "--trainer.log_every_n_steps", "1"),
            *("--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"),
            *("--trainer.enable_model_summary", "false"),
        ]
    )
    print_first_and_last_losses(root, "Alice", ("cls", "patch", "rec", "loss"))
    checkpoint = Path(cli.trainer.checkpoint_callback.best_model_path)
    status = medssl_main(["export", str(checkpoint), "--out", str(out / "alice-encoder.pt")])
    status |= alice_dense(out, checkpoint)
    print(
        f"(the demo's volumes only show the path: {epochs} steps of L_cls + L_patch + 10·L_rec on pairs of\n"
        " overlapping crops; pipelines/alice_experiment.py measures whether the dense features match anatomy)\n"
    )
    return status


def alice_dense(out: Path, checkpoint: Path) -> int:
    """``medssl embed --dense`` of Alice's teacher over the volume cache → ``alice-dense/``: each volume's
    coarse (stride 16) and fine (stride 4) L2-normalised decoder maps, what landmark matching compares
    (notebooks/06_methods.ipynb matches the two CT phantoms)."""
    from medssl.cache import EmbeddingCache

    dense = out / "alice-dense"
    status = medssl_main(
        ["embed", str(checkpoint), "--dense", "--cache", str(out / "volume-cache"), "--out", str(dense)]
        + ["--quiet", "--overwrite"]
    )
    store = EmbeddingCache(dense)
    for volume_id in store.ids:
        maps = store.dense(volume_id)
        shapes = ", ".join(f"{level} {tuple(m.array.shape)}" for level, m in maps.items())
        print(f"{volume_id:<22}dense maps {shapes}")
    return status


def multistain(out: Path, epochs: int) -> None:
    """``pipelines/madeleine_experiment.py`` at demo size: 24 cases (12 pretrain on H&E, ER, PR, HER2 and
    Ki-67 slides; 12 held out), one seed, few-shot k = 1 and 3 over 5 folds on the held-out H&E slides; the
    slide embeddings of every stain (``seed-0/slide-embeddings-all-stains``) for cross-stain retrieval."""
    from madeleine_experiment import parser
    from madeleine_experiment import run as run_experiment

    settings = ["--out", str(out), "--cases", "24", "--size", "1024", "--seeds", "0", "--epochs", str(epochs)]
    settings += ["--tokens", "64", "--batch-size", "12", "--width", "64", "--shots", "1", "3", "--folds", "5"]
    settings += ["--abmil-epochs", "20"]
    results = run_experiment(parser().parse_args(settings))
    print("\nfew-shot AUROC of held-out H&E slides (positive vs negative cases), logistic regression C = 1:")
    print(results["table"])
    print(
        "(6 held-out cases per class and a few pretraining steps only show the path works; "
        "pipelines/madeleine_experiment.py runs the comparison)\n"
    )


# The CT phantoms: the same 240 × 240 × 192 mm body at two resolutions, each with its lung label.
CT_PHANTOMS = {
    "ct-phantom": ((160, 160, 48), 0, (1.5, 1.5, 4.0)),
    "ct-phantom-2": ((128, 128, 40), 1, (1.875, 1.875, 4.8)),
}


def write_volume_inputs(folder: Path) -> Path:
    """A CSV listing a real MRI shipped with nibabel and two generated CT phantoms with their lung labels."""
    rows = ["volume_id,image,label,modality", f"mri-anatomical,{nibabel_data('anatomical.nii')},,MR"]
    rows += [f"{name},{image.name},{label.name},CT" for name, (image, label) in write_ct_phantoms(folder).items()]
    manifest = folder / "volumes.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def write_lung_inputs(folder: Path) -> Path:
    """A CSV of the two CT phantoms alone (segmentation needs a label map for every volume of its cache),
    with a split: train on ``ct-phantom``, test on ``ct-phantom-2``."""
    rows = ["volume_id,image,label,modality,split"]
    for (name, (image, label)), split in zip(write_ct_phantoms(folder).items(), ("train", "test")):
        rows.append(f"{name},{image.name},{label.name},CT,{split}")
    manifest = folder / "lungs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def write_ct_phantoms(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``CT_PHANTOMS`` as NIfTI in ``folder`` (kept when there), each with its lung label (-950 to -600 HU)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (shape, seed, spacing) in CT_PHANTOMS.items():
        image, label = folder / f"{name}.nii.gz", folder / f"{name}-lungs.nii.gz"
        if not (image.exists() and label.exists()):
            volume = ct_phantom(shape, seed=seed)
            write_nifti(label, ((volume < -600) & (volume > -950)).astype(np.uint8), grid_affine(spacing))
            write_nifti(image, volume, grid_affine(spacing))
        paths[name] = (image, label)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs (each a few steps)")
    parser.add_argument("--mil-epochs", type=int, default=20, help="ABMIL and INS epochs")
    parser.add_argument(
        "--finetune-steps", type=int, default=40, help="tile classification fine-tuning steps (lung segmentation: half)"
    )
    parser.add_argument("--joint-epochs", type=int, default=15, help="joint 2D/3D epochs (one step each)")
    parser.add_argument("--alice-epochs", type=int, default=8, help="Alice epochs (one step each)")
    parser.add_argument("--madeleine-epochs", type=int, default=10, help="MADELEINE epochs (one step each)")
    parser.add_argument(
        "--tiny", action="store_true", help="every step at its smallest (about 90 s; what the notebook tests run on)"
    )
    args = parser.parse_args(argv)
    if args.tiny:  # new defaults, so flags given explicitly still win
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    return run(
        args.out.resolve(),  # manifests then record absolute paths, which notebooks/ can open from anywhere
        args.slides,
        args.epochs,
        args.mil_epochs,
        args.finetune_steps,
        args.joint_epochs,
        args.alice_epochs,
        args.madeleine_epochs,
    )


if __name__ == "__main__":
    sys.exit(main())
