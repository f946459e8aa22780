"""Reading a run's logs back: the CSV and TensorBoard loggers of one run give the same rows; the newest
version folder is found by number; a folder without logs is refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medssl.viz.runs import RunLogError, log_folders, newest_log_folder, read_run_log

#: (step, epoch, metrics) of each log call, as Lightning makes them: train losses, then validation
CALLS = [
    (0, 0, {"train/loss": 2.5}),
    (4, 0, {"train/loss": 1.75}),
    (4, 0, {"val/rankme": 3.0, "val/knn_accuracy": 0.625}),
    (9, 1, {"train/loss": 1.25}),
    (9, 1, {"val/rankme": 5.5, "val/knn_accuracy": 0.75}),
]
EXPECTED = [  # by step, then metric
    {"metric": name, "step": step, "epoch": epoch, "value": value}
    for step, epoch, metrics in CALLS
    for name, value in sorted(metrics.items())
]


def log_with_lightning(run: Path) -> None:
    """One run logged the way ``medssl fit`` logs: TensorBoard in lightning_logs/, CSV in csv_logs/."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [TensorBoardLogger(run, name="lightning_logs"), CSVLogger(run, name="csv_logs")]
    for logger in loggers:
        logger.log_hyperparams({"lr": 0.1})  # TensorBoard's hp_metric -1 placeholder comes with it
        for step, epoch, metrics in CALLS:
            logger.log_metrics({**metrics, "epoch": epoch}, step=step)
        logger.finalize("success")


def write_csv(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_csv_and_tensorboard_logs_of_one_run_read_the_same(tmp_path):
    log_with_lightning(tmp_path)
    csv_log, events = read_run_log(tmp_path, "csv"), read_run_log(tmp_path, "tensorboard")
    assert csv_log.folder == tmp_path / "csv_logs" / "version_0" and csv_log.source == "csv"
    assert events.folder == tmp_path / "lightning_logs" / "version_0" and events.source == "tensorboard"
    assert csv_log.rows == EXPECTED  # exact: the CSV holds Python floats
    assert [{**row, "value": pytest.approx(row["value"])} for row in EXPECTED] == events.rows  # float32
    assert csv_log.metrics == events.metrics == ["train/loss", "val/knn_accuracy", "val/rankme"]
    assert csv_log.scalars()["train/loss"] == [(0, 2.5), (4, 1.75), (9, 1.25)]
    assert events.scalars()["val/rankme"] == [(4, 3.0), (9, 5.5)]
    assert read_run_log(tmp_path).source == "csv"  # auto: the CSV when there is one


def test_tensorboard_files_of_one_folder_are_read_together_and_hp_metric_kept_when_real(tmp_path):
    """Lightning opens a new event file when the same trainer validates again (the demo's random-init
    baseline); both files' values belong to the run. A real hp_metric is a metric like any other."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "lightning_logs" / "version_0"
    for step, value in ((1, 8.0), (2, 2.0)):
        with SummaryWriter(str(folder)) as writer:
            writer.add_scalar("val/rankme", value, step)
            writer.add_scalar("epoch", step - 1, step)
            writer.add_scalar("hp_metric", 0.5, step)
    log = read_run_log(tmp_path)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2 and log.source == "tensorboard"
    assert log.scalars() == {"hp_metric": [(1, 0.5), (2, 0.5)], "val/rankme": [(1, 8.0), (2, 2.0)]}
    assert [row["epoch"] for row in log.rows if row["metric"] == "val/rankme"] == [0, 1]


def test_the_newest_version_is_the_highest_number_not_the_last_in_text_order(tmp_path):
    for number, loss in ((2, "1.0"), (10, "0.5"), (9, "0.75")):
        write_csv(tmp_path / "csv_logs" / f"version_{number}", ["epoch,step,train/loss", f"0,3,{loss}"])
    folder, kind = newest_log_folder(tmp_path)
    assert (folder.name, kind) == ("version_10", "csv")
    assert read_run_log(tmp_path).scalars() == {"train/loss": [(3, 0.5)]}
    assert [f.name for f, _ in log_folders(tmp_path)] == ["version_2", "version_9", "version_10"]
    assert read_run_log(tmp_path / "csv_logs" / "version_2").scalars() == {"train/loss": [(3, 1.0)]}  # a version itself


def test_auto_reads_the_newest_version_of_either_logger_and_the_csv_of_a_version_both_wrote(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    write_csv(tmp_path / "csv_logs" / "version_0", ["epoch,step,train/loss", "0,1,0.5"])
    with SummaryWriter(str(tmp_path / "lightning_logs" / "version_1")) as writer:  # a later run: TensorBoard only
        writer.add_scalar("train/loss", 0.25, 1)
    assert newest_log_folder(tmp_path) == (tmp_path / "lightning_logs" / "version_1", "tensorboard")
    assert newest_log_folder(tmp_path, "csv") == (tmp_path / "csv_logs" / "version_0", "csv")
    write_csv(tmp_path / "csv_logs" / "version_1", ["epoch,step,train/loss", "0,1,0.25"])
    assert newest_log_folder(tmp_path) == (tmp_path / "csv_logs" / "version_1", "csv")


def test_csv_rows_by_step_then_metric_keep_file_order_of_repeats_and_skip_empty_cells(tmp_path):
    write_csv(tmp_path, ["epoch,step,val/auroc,train/loss", "0,5,0.5,", "0,5,,1.5", "0,5,0.25,", "1,2,,2.5"])
    assert read_run_log(tmp_path).rows == [
        {"metric": "train/loss", "step": 2, "epoch": 1, "value": 2.5},
        {"metric": "train/loss", "step": 5, "epoch": 0, "value": 1.5},
        {"metric": "val/auroc", "step": 5, "epoch": 0, "value": 0.5},
        {"metric": "val/auroc", "step": 5, "epoch": 0, "value": 0.25},
    ]


def test_folders_without_logs_and_bad_files_are_refused_by_name(tmp_path):
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)  # logger: false
    with pytest.raises(RunLogError, match=f"{tmp_path}: no training logs.*logger"):
        read_run_log(tmp_path)
    with pytest.raises(RunLogError, match="no such run folder"):
        read_run_log(tmp_path / "absent")
    write_csv(tmp_path / "csv_logs" / "version_0", ["epoch,step,train/loss", "0,1,0.5"])
    with pytest.raises(RunLogError, match=r"no training logs \(events.out.tfevents"):
        read_run_log(tmp_path, "tensorboard")
    with pytest.raises(ValueError, match="source must be one of"):
        read_run_log(tmp_path, "wandb")
    bad = write_csv(tmp_path / "bad", ["epoch,loss", "0,1"])
    with pytest.raises(RunLogError, match=f"{bad / 'metrics.csv'}: not a Lightning metrics CSV"):
        read_run_log(bad)
    worse = write_csv(tmp_path / "worse", ["epoch,step,loss", "0,1,high"])
    with pytest.raises(RunLogError, match=f"{os.fspath(worse / 'metrics.csv')}, line 2: not a number"):
        read_run_log(worse)
