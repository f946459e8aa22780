"""Offline probes on frozen embeddings: logistic regression and kNN, their metrics, and the few-shot
protocol (k labelled samples per class, one seeded draw per fold, mean ± std over folds).

Pure functions on tensors; :mod:`medssl.tasks.probes` reads embedding folders and calls them.

Choices, stated once:
- **Logistic regression**: :func:`~medssl.eval.linear_probe.fit_linear_probe` (L-BFGS to the optimum of
  mean cross-entropy + ``l2/2·||W||²`` on features standardised with the training set's mean and std),
  run in float32: on 80,000 × 512 it reaches the float64 weights to ~1e-4 with the same test predictions,
  in fewer evaluations and half the memory (see benchmarks/bench_probes.py). ``l2`` is chosen from
  :data:`L2_GRID` by balanced accuracy on a validation split when one is given (ties go to the larger,
  smoother value), fixed otherwise (default :data:`DEFAULT_L2`; few-shot always uses a fixed value, as
  1–25 samples per class leave nothing to validate on).
- **Logistic regression as scikit-learn fits it** (``logistic``, the probe of MADELEINE and of most
  slide-embedding papers): ``LogisticRegression(C=1)`` on *raw* features, i.e. the same L-BFGS fit with no
  standardisation and ``l2 = 2 / (C·n)`` for two classes (``1 / (C·n)`` for more), which is where
  scikit-learn's ``½||w||² + C Σ log-loss`` has its optimum (a softmax over two classes splits ``w`` into
  ``±w/2``, halving the penalty). Tested against scikit-learn.
- **kNN**: :func:`~medssl.eval.knn.knn_predict` (cosine similarity, the ``k = 20`` nearest vote with
  ``exp(similarity / 0.07)``, as DINO evaluates), votes normalised to sum to one per query, so the
  scores rank for AUROC.
- **Metrics** (torchmetrics): balanced accuracy (mean per-class recall), macro AUROC (one-vs-rest) and
  macro F1, each averaged over the classes present in the evaluated targets (a class absent from a
  test set has no recall or AUROC to average); AUROC is None with fewer than two classes present.
- **Few-shot draws**: per fold ``f`` (seed ``f``), per class, a random order of its training samples;
  the first ``k`` are the k-shot set, so one fold's 1-shot set is inside its 10-shot set. With case ids,
  the order visits the class's cases in random order, one random sample per case, before any case gives
  a second: k samples come from k distinct cases whenever the class has that many cases, because
  samples of one patient are not independent shots. A ``k`` above some class's training count is
  skipped with the reason (never silently fewer shots). :func:`few_shot` tests every fold on one fixed
  test set; :func:`few_shot_rest` (the slide-embedding papers' way) on every sample not drawn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_auroc, multiclass_f1_score, multiclass_recall

from medssl.eval.knn import knn_predict
from medssl.eval.linear_probe import fit_linear_probe, linear_probe_logits

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_L2 = 1e-3
KNN_K, KNN_TEMPERATURE = 20, 0.07
METRICS = ("balanced_accuracy", "auroc", "f1")
PROBES = ("linear", "knn")  #: the probes run by default
AVAILABLE_PROBES = (*PROBES, "logistic")
SKLEARN_C = 1.0

#: ``probe(train_x, train_y, test_x, num_classes) -> scores [Q, C]`` (rows sum to one)
Probe = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2
) -> torch.Tensor:
    """Class probabilities ``[Q, C]`` of ``test_x`` from logistic regression fitted on the training set."""
    probe = fit_linear_probe(train_x, train_y, num_classes, l2, dtype=torch.float32)
    return linear_probe_logits(test_x, *probe).softmax(1)


def logistic_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, c: float = SKLEARN_C
) -> torch.Tensor:
    """Class probabilities ``[Q, C]`` of scikit-learn's ``LogisticRegression(C=c)`` fitted on raw features
    (module notes), in float64."""
    l2 = (2.0 if num_classes == 2 else 1.0) / (c * len(train_x))
    probe = fit_linear_probe(train_x, train_y, num_classes, l2, iterations=500, standardize=False)
    return linear_probe_logits(test_x, *probe).softmax(1).to(test_x.dtype)


def knn_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Weighted-kNN class scores ``[Q, C]``, normalised to sum to one per query."""
    votes = knn_predict(train_x, train_y, test_x, num_classes, k, temperature)
    return votes / votes.sum(1, keepdim=True).clamp_min(torch.finfo(votes.dtype).tiny)


def get_probe(probe: str | Probe, l2: float = DEFAULT_L2) -> Probe:
    """A probe by name (``linear`` with this ``l2``, ``knn``) or the callable itself."""
    if callable(probe):
        return probe
    if probe == "linear":
        return lambda tx, ty, qx, c: linear_probe(tx, ty, qx, c, l2)
    if probe == "knn":
        return knn_probe
    if probe == "logistic":
        return logistic_probe
    raise ValueError(f"unknown probe {probe!r}; choose from {AVAILABLE_PROBES}")


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    """Balanced accuracy, macro AUROC and macro F1 of ``scores [N, C]`` against ``targets [N]``,
    averaged over the classes present in ``targets``."""
    targets = targets.long()
    present = torch.bincount(targets, minlength=num_classes) > 0
    scores = scores.float()
    with warnings.catch_warnings():  # torchmetrics warns of classes absent from targets: they are left out below
        warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
        recall = multiclass_recall(scores, targets, num_classes, average=None)
        f1 = multiclass_f1_score(scores, targets, num_classes, average=None)
        per_class = multiclass_auroc(scores, targets, num_classes, average=None, thresholds=None)
    auroc = float(per_class[present].mean()) if int(present.sum()) >= 2 else None
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "auroc": auroc,
        "f1": float(f1[present].mean()),
    }


def select_l2(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    grid: Sequence[float] = L2_GRID,
) -> tuple[float, dict[float, float]]:
    """The ``l2`` of ``grid`` whose probe has the best validation balanced accuracy (ties: the larger),
    and every value's score."""
    scores = {
        l2: classification_metrics(linear_probe(train_x, train_y, val_x, num_classes, l2), val_y, num_classes)
        for l2 in grid
    }
    accuracy = {l2: float(metrics["balanced_accuracy"] or 0.0) for l2, metrics in scores.items()}
    best = max(sorted(accuracy, reverse=True), key=lambda l2: accuracy[l2])
    return best, accuracy


def shot_order(labels: torch.Tensor, seed: int, cases: Sequence[str] | None = None) -> dict[int, np.ndarray]:
    """Per class, its sample indices in the seeded order few-shot sets are taken from (see the module
    notes: distinct cases first when ``cases`` are given)."""
    rng = np.random.default_rng(seed)
    values = labels.cpu().numpy()
    order: dict[int, np.ndarray] = {}
    for label in np.unique(values):
        members = np.flatnonzero(values == label)
        if cases is None:
            order[int(label)] = members[rng.permutation(len(members))]
            continue
        by_case: dict[str, list[int]] = {}
        for index in members[rng.permutation(len(members))]:
            by_case.setdefault(cases[int(index)], []).append(int(index))
        names = sorted(by_case)
        names = [names[i] for i in rng.permutation(len(names))]
        rounds = max(len(v) for v in by_case.values())
        order[int(label)] = np.array(
            [by_case[name][r] for r in range(rounds) for name in names if r < len(by_case[name])], dtype=np.int64
        )
    return order


def draw_shots(labels: torch.Tensor, shots: int, seed: int, cases: Sequence[str] | None = None) -> torch.Tensor:
    """Indices of exactly ``shots`` samples of every class in ``labels`` (sorted), drawn with ``seed``."""
    order = shot_order(labels, seed, cases)
    short = {label: len(indices) for label, indices in order.items() if len(indices) < shots}
    if short:
        raise ValueError(f"{shots}-shot needs {shots} samples per class; classes {short} have fewer")
    return _take(order, shots)


def _take(order: dict[int, np.ndarray], shots: int) -> torch.Tensor:
    """The first ``shots`` of every class's order, as sorted sample indices."""
    return torch.from_numpy(np.sort(np.concatenate([indices[:shots] for indices in order.values()])))


def few_shot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    shots: Sequence[int] = (1, 10, 25),
    folds: int = 10,
    probe: str | Probe = "linear",
    cases: Sequence[str] | None = None,
    num_classes: int | None = None,
    l2: float = DEFAULT_L2,
) -> dict[int, dict]:
    """Per ``k`` in ``shots``: the probe trained on ``k`` samples per class (fold ``f`` drawn with seed
    ``f``) and scored on the whole test set, as ``{"mean": {metric: v}, "std": {...}, "folds": [{...}]}``
    (std over folds with ddof 1), or ``{"skipped": reason}`` when some class has fewer than ``k``
    training samples. ``cases`` (one id per training sample) spreads the shots over distinct cases."""
    num_classes = int(max(int(train_y.max()), int(test_y.max())) + 1) if num_classes is None else num_classes
    fit = get_probe(probe, l2)

    def evaluate(chosen: torch.Tensor) -> dict[str, float | None]:
        return classification_metrics(fit(train_x[chosen], train_y[chosen], test_x, num_classes), test_y, num_classes)

    return _per_shot(train_y, shots, folds, cases, num_classes, evaluate)


def few_shot_rest(
    x: torch.Tensor,
    y: torch.Tensor,
    shots: Sequence[int] = (1, 10, 25),
    folds: int = 10,
    probe: str | Probe = "logistic",
    cases: Sequence[str] | None = None,
    num_classes: int | None = None,
    l2: float = DEFAULT_L2,
) -> dict[int, dict]:
    """The slide-embedding papers' protocol (MADELEINE's): per fold ``f`` (seed ``f``), ``k`` samples per
    class drawn from all of ``x`` train the probe, and **every other sample** is the test set, so a
    larger ``k`` also means a smaller test set. With ``cases``, samples that share a case with a training
    sample are left out of that fold's test set too. Same result layout as :func:`few_shot`."""
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    fit = get_probe(probe, l2)
    case_of = np.asarray(cases if cases is not None else [str(i) for i in range(len(y))])

    def evaluate(chosen: torch.Tensor) -> dict[str, float | None]:
        rest = torch.from_numpy(~np.isin(case_of, case_of[chosen.cpu().numpy()])).to(x.device)
        return classification_metrics(fit(x[chosen], y[chosen], x[rest], num_classes), y[rest], num_classes)

    return _per_shot(y, shots, folds, cases, num_classes, evaluate)


def _per_shot(
    labels: torch.Tensor,
    shots: Sequence[int],
    folds: int,
    cases: Sequence[str] | None,
    num_classes: int,
    evaluate: Callable[[torch.Tensor], dict[str, float | None]],
) -> dict[int, dict]:
    """``evaluate(chosen)`` on each fold's ``k``-shot draw from ``labels`` for every ``k``, summarised."""
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes)
    orders = [shot_order(labels, fold, cases) for fold in range(folds)]
    results: dict[int, dict] = {}
    for k in shots:
        short = [c for c in range(num_classes) if int(counts[c]) < k]
        if short:
            results[k] = {"skipped": f"classes {short} have fewer than {k} training samples ({counts.tolist()})"}
            continue
        per_fold = [evaluate(_take(order, k).to(labels.device)) for order in orders]
        results[k] = {"mean": _summary(per_fold, np.mean), "std": _summary(per_fold, _std), "folds": per_fold}
    return results


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _summary(per_fold: list[dict[str, float | None]], reduce: Callable[[np.ndarray], float]) -> dict[str, float | None]:
    """``reduce`` over folds per metric; None where any fold had none (e.g. one class in the test set)."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        values = [fold[metric] for fold in per_fold]
        out[metric] = None if any(v is None for v in values) else float(reduce(np.asarray(values, dtype=np.float64)))
    return out
