"""A training run's Lightning logs read back as numbers: the scalars the CSV logger wrote
(``metrics.csv``) or the TensorBoard logger wrote (``events.out.tfevents.*``), from the newest version
folder under a run folder. ``medssl fit`` writes both (``csv_logs/version_N/`` and
``lightning_logs/version_N/`` under ``default_root_dir``); either alone is enough, so curves can be drawn
from runs made elsewhere too. The numbers behind training curves (notebooks/03_pretraining.ipynb draws
them); it lives in viz, not eval, so reading a log imports neither torch nor Lightning (only
TensorBoard's event reader, when the run has no CSV).

>>> log = read_run_log("demo-output/runs/simclr")          # doctest: +SKIP
>>> log.folder, log.metrics, log.scalars()["val/rankme"]   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medssl.errors import MedsslError

CSV_FILE = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"
SOURCES = ("auto", "csv", "tensorboard")
_VERSION = re.compile(r"version_(\d+)$")


class RunLogError(MedsslError):
    """A run folder holds no logs of the kind asked for, or a log cannot be read."""


@dataclass(frozen=True)
class RunLog:
    """The scalars of one version folder: ``rows`` of ``{"metric", "step", "epoch", "value"}`` sorted by
    step, then metric (the epoch a value was logged in, or None when the logger recorded none)."""

    folder: Path
    source: str  #: "csv" or "tensorboard"
    rows: list[dict]

    @property
    def metrics(self) -> list[str]:
        """Names of the logged metrics, sorted."""
        return sorted({row["metric"] for row in self.rows})

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """``{metric: [(step, value), ...]}`` in step order."""
        out: dict[str, list[tuple[int, float]]] = {}
        for row in self.rows:
            out.setdefault(row["metric"], []).append((row["step"], row["value"]))
        return dict(sorted(out.items()))


def _kind(folder: Path) -> list[str]:
    """The kinds of log ``folder`` itself holds: "csv", "tensorboard", both or none."""
    kinds = []
    if (folder / CSV_FILE).is_file():
        kinds.append("csv")
    if any(path.is_file() for path in folder.glob(EVENTS_GLOB)):
        kinds.append("tensorboard")
    return kinds


def log_folders(run: str | os.PathLike) -> list[tuple[Path, str]]:
    """Every ``(folder, kind)`` under ``run`` that holds logs, oldest first: ``run`` itself, its
    ``version_*`` folders, and the ``version_*`` folders of each logger (``run/<logger>/version_N``).
    Versions are ordered by their number (``version_10`` after ``version_9``), then by modification time."""
    run = Path(run)
    candidates = [run, *sorted(run.glob("version_*")), *sorted(run.glob("*/version_*"))]
    found = [(folder, kind) for folder in candidates if folder.is_dir() for kind in _kind(folder)]
    return sorted(found, key=lambda item: (_version(item[0]), item[0].stat().st_mtime))


def _version(folder: Path) -> int:
    """N of a ``version_N`` folder; -1 for any other name."""
    match = _VERSION.match(folder.name)
    return int(match.group(1)) if match else -1


def newest_log_folder(run: str | os.PathLike, source: str = "auto") -> tuple[Path, str]:
    """The newest version folder under ``run`` with logs of ``source`` ("csv", "tensorboard", or "auto":
    the newest version of either, its CSV when the CSV logger wrote the same version), and its kind."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    run = Path(run)
    if not run.is_dir():
        raise RunLogError(f"{run}: no such run folder")
    found = [(folder, kind) for folder, kind in log_folders(run) if source in ("auto", kind)]
    if found:
        newest = [item for item in found if _version(item[0]) == _version(found[-1][0])]
        return next((item for item in reversed(newest) if item[1] == "csv"), newest[-1])
    wanted = {"auto": f"{CSV_FILE} or {EVENTS_GLOB}", "csv": CSV_FILE, "tensorboard": EVENTS_GLOB}[source]
    raise RunLogError(
        f"{run}: no training logs ({wanted}) in it or in its */version_* folders; "
        "was the run made with a logger (trainer.logger not false)?"
    )


def read_run_log(run: str | os.PathLike, source: str = "auto") -> RunLog:
    """The scalars of the newest version under ``run`` (see :func:`newest_log_folder`)."""
    folder, kind = newest_log_folder(run, source)
    rows = read_csv_log(folder / CSV_FILE) if kind == "csv" else read_tensorboard_log(folder)
    return RunLog(folder, kind, rows)


def read_csv_log(path: str | os.PathLike) -> list[dict]:
    """Rows of a Lightning ``metrics.csv``: one per non-empty metric cell, with the line's step and epoch."""
    path = Path(path)
    rows = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise RunLogError(f"{path}: not a Lightning metrics CSV (no 'step' column in {reader.fieldnames})")
        metrics = [name for name in reader.fieldnames if name not in ("step", "epoch")]
        for line, record in enumerate(reader, start=2):
            try:
                step = int(float(record["step"]))
                epoch = int(float(record["epoch"])) if record.get("epoch") else None
                values = {name: float(record[name]) for name in metrics if record.get(name)}
            except ValueError as error:
                raise RunLogError(f"{path}, line {line}: not a number ({error})") from None
            rows += [{"metric": name, "step": step, "epoch": epoch, "value": v} for name, v in values.items()]
    return _in_step_order(rows)


def read_tensorboard_log(folder: str | os.PathLike) -> list[dict]:
    """Rows of every scalar in the TensorBoard event files of ``folder`` (all of them: Lightning starts a
    new file when a trainer validates or tests again). The ``epoch`` scalar Lightning logs with each
    call becomes each row's epoch (the one at the same step, nearest in time); the ``hp_metric`` -1
    placeholder it writes with the hyperparameters is left out."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    folder = Path(folder)
    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every value
    try:
        accumulator.Reload()
    except Exception as error:  # a truncated or foreign file: say which folder
        raise RunLogError(f"{folder}: TensorBoard event files cannot be read ({error})") from None
    tags = accumulator.Tags()["scalars"]
    epochs: dict[int, list[tuple[float, int]]] = {}
    for event in accumulator.Scalars("epoch") if "epoch" in tags else []:
        epochs.setdefault(event.step, []).append((event.wall_time, int(event.value)))

    def epoch_at(step: int, wall_time: float) -> int | None:
        logged = epochs.get(step)
        return min(logged, key=lambda e: abs(e[0] - wall_time))[1] if logged else None

    timed = []
    for tag in tags:
        events = accumulator.Scalars(tag)
        if tag == "epoch" or (tag == "hp_metric" and all(e.value == -1 for e in events)):
            continue
        for e in events:
            row = {"metric": tag, "step": int(e.step), "epoch": epoch_at(e.step, e.wall_time), "value": float(e.value)}
            timed.append((e.wall_time, row))
    timed.sort(key=lambda pair: pair[0])  # the order they were logged in
    return _in_step_order(row for _, row in timed)


def _in_step_order(rows: Iterable[dict]) -> list[dict]:
    """Sorted by step, then metric name (a CSV line does not say in which order its cells were logged),
    stably: one metric logged twice at a step keeps the order it was logged in."""
    return sorted(rows, key=lambda row: (row["step"], row["metric"]))
