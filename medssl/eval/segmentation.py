"""Segmentation metrics per case on the whole 3D volume (MONAI's Dice, IoU and 95th-percentile Hausdorff).

A case is scored once, on its whole label volume: a 2D model's slice predictions are stacked first, so
its Dice is the 3D Dice of the case (the joint 2D/3D protocol), not a mean of slice Dices, which would
weigh a slice with three foreground voxels like one with three thousand.

Per foreground class (background is not scored): ``dice`` and ``iou`` are NaN when the class is absent
from the case's truth (nothing to find: MONAI's ``ignore_empty``); ``hd95`` is in mm (the volume's
spacing) and NaN when the class is absent from the truth *or* the prediction (no surface to measure;
the Dice of 0 records the miss). Means over classes and cases skip NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

METRICS = ("dice", "iou", "hd95")


def one_hot_volume(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[Z, Y, X]`` (or any spatial shape) integer labels → ``[1, C, *spatial]`` one-hot (uint8)."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 0)[None].to(torch.uint8)


def case_metrics(
    prediction: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
) -> dict[str, list[float]]:
    """``{"dice": [...], "iou": [...], "hd95": [...]}``, one value per foreground class (1 … C-1), of a
    predicted label volume against the truth (same shape); ``spacing`` (mm per axis, in the volumes'
    axis order) scales HD95, which ``hd95=False`` skips (NaN)."""
    from monai.metrics.hausdorff_distance import HausdorffDistanceMetric
    from monai.metrics.meandice import DiceMetric
    from monai.metrics.meaniou import MeanIoU

    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape")
    pred, true = one_hot_volume(prediction, num_classes), one_hot_volume(truth, num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(pred, true)
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)(pred, true)
    out = {"dice": _values(dice), "iou": _values(iou), "hd95": [math.nan] * (num_classes - 1)}
    if hd95:
        metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        with warnings.catch_warnings():  # MONAI warns for each class missing from truth or prediction
            warnings.simplefilter("ignore")
            distances = metric(pred, true, spacing=None if spacing is None else [float(s) for s in spacing])
        out["hd95"] = _values(distances)
    return out


def _values(metric) -> list[float]:
    """A metric's ``[1, C-1]`` tensor (MONAI types its result loosely) as floats, NaN for non-finite."""
    values = [float(v) for v in metric.reshape(-1)]
    return [v if math.isfinite(v) else math.nan for v in values]


def nanmean(values: Sequence[float]) -> float:
    """The mean of the finite values, NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def case_row(volume_id: str, metrics: dict[str, list[float]], class_names: Sequence[str]) -> dict[str, float | str]:
    """One ``cases.csv`` row: the volume (a case's scan), each metric per class (``dice_<class>``) and its
    mean over classes."""
    row: dict[str, float | str] = {"volume_id": volume_id}
    for name in METRICS:
        row[name] = nanmean(metrics[name])
        for class_name, value in zip(class_names, metrics[name]):
            row[f"{name}_{class_name}"] = value
    return row


def summarise(rows: Sequence[dict], class_names: Sequence[str]) -> dict[str, float]:
    """Means over cases (NaN skipped) of every metric and every per-class metric, and the case count."""
    keys = [*METRICS, *(f"{m}_{c}" for m in METRICS for c in class_names)]
    summary = {key: nanmean([float(row[key]) for row in rows]) for key in keys}
    summary["cases"] = float(len(rows))
    return summary
