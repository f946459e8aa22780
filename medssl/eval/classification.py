"""Metrics of a classifier over a whole evaluation set, from its class probabilities.

Computed once per set from every sample's probabilities (never averaged over batches or ranks), so
AUROC ranks the whole set and the value does not depend on how the set was split into batches or
processes. Classes absent from the set are left out of the macro averages (as scikit-learn's balanced
accuracy does) and their one-vs-rest AUROC is None, rather than a silent 0 that drags the mean down.
:func:`roc_curve` gives the points of a binary ROC curve, for drawing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def classification_metrics(
    probabilities: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], ordinal: bool = False
) -> dict[str, float | None]:
    """``auroc`` (macro over one-vs-rest AUROCs), ``auroc_<class>``, ``balanced_accuracy`` (macro recall),
    ``f1`` (macro), ``accuracy`` and, when ``ordinal`` (the classes are ordered grades), ``kappa``
    (quadratic-weighted Cohen's kappa). ``probabilities`` ``[N, C]``, ``labels`` ``[N]`` class indices.
    A metric that the set cannot define (one class only) is None."""
    # torchmetrics takes seconds to import: only here, so roc_curve's users (notebooks) do without it
    from torchmetrics.functional.classification import binary_auroc, multiclass_cohen_kappa, multiclass_confusion_matrix

    probabilities, labels = probabilities.float(), labels.long()
    num_classes = len(classes)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes or len(labels) != len(probabilities):
        raise ValueError(f"probabilities {tuple(probabilities.shape)} and labels {tuple(labels.shape)} for {classes}")
    predictions = probabilities.argmax(1)
    confusion = multiclass_confusion_matrix(predictions, labels, num_classes).double()  # [true, predicted]
    metrics: dict[str, float | None] = {}
    per_class = {}
    for k, name in enumerate(classes):
        positive = labels == k
        both = bool(positive.any()) and not bool(positive.all())
        per_class[name] = float(binary_auroc(probabilities[:, k], positive.long())) if both else None
    defined = [v for v in per_class.values() if v is not None]
    metrics["auroc"] = sum(defined) / len(defined) if defined else None
    metrics.update({f"auroc_{name}": value for name, value in per_class.items()})
    metrics.update(confusion_metrics(confusion))
    if ordinal:
        kappa = multiclass_cohen_kappa(predictions, labels, num_classes, weights="quadratic")
        metrics["kappa"] = float(kappa) if torch.isfinite(kappa) else None
    metrics["samples"] = float(len(labels))
    return metrics


def confusion_metrics(confusion: torch.Tensor) -> dict[str, float | None]:
    """Balanced accuracy (mean recall over the classes that occur), macro F1 (over the classes that occur
    or are predicted) and accuracy of a confusion matrix ``[true, predicted]``."""
    confusion = confusion.double()
    support, predicted, hits = confusion.sum(1), confusion.sum(0), confusion.diagonal()
    total = float(confusion.sum())
    occurs = support > 0
    recall = hits[occurs] / support[occurs]
    seen = occurs | (predicted > 0)
    f1 = 2 * hits[seen] / (support[seen] + predicted[seen])
    return {
        "balanced_accuracy": float(recall.mean()) if occurs.any() else None,
        "f1": float(f1.mean()) if seen.any() else None,
        "accuracy": float(hits.sum()) / total if total else None,
    }


def roc_curve(scores, truth) -> dict | None:
    """The exact ROC curve of ``scores`` against binary ``truth`` (1 positive, 0 negative): ``fpr``,
    ``tpr`` and ``thresholds`` (numpy, one point per distinct score from the highest down, after a first
    point (0, 0) at threshold +inf, as scikit-learn's ``roc_curve(drop_intermediate=False)``), and
    ``auroc``, the area under those points (tied scores count half, as the Mann–Whitney statistic).
    Instances whose truth or score is NaN (unknown, unscored) are left out. None unless both classes
    occur: a curve through one class is not a curve."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    if scores.shape != truth.shape:
        raise ValueError(f"{len(scores)} scores for {len(truth)} truth values")
    known = ~(np.isnan(truth) | np.isnan(scores))
    scores, truth = scores[known], truth[known]
    if not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError(f"truth must be 0, 1 or NaN, got {sorted(set(truth.tolist()) - {0.0, 1.0})[:5]}")
    positives = float(truth.sum())
    negatives = float(len(truth)) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last instance at each distinct score
    true_positives = np.cumsum(truth)[ends]
    false_positives = ends + 1 - true_positives
    tpr = np.r_[0.0, true_positives / positives]
    fpr = np.r_[0.0, false_positives / negatives]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.r_[np.inf, scores[ends]], "auroc": auroc}
