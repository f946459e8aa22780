"""Offline probes: the logistic probe against scikit-learn's solver, the kNN probe by hand, metrics on
a known case, and the few-shot draws (exactly k per class, distinct cases, folds differ, seeds replay)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.eval.probes import (
    classification_metrics,
    draw_shots,
    few_shot,
    few_shot_rest,
    knn_probe,
    linear_probe,
    logistic_probe,
    select_l2,
    shot_order,
)


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int, sets: int = 1) -> list[torch.Tensor]:
    """``sets`` (features, labels) pairs drawn around the same class centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * spread
    y = torch.arange(classes).repeat_interleave(n_per_class)
    out = []
    for _ in range(sets):
        out += [centres[y] + torch.randn(len(y), dim, generator=generator), y]
    return out


def test_linear_probe_matches_scipy_on_the_same_objective():
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    x, y = _blobs(30, 3, 5, 1.0, seed=0)
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 5  # standardisation must undo scales and offsets
    l2 = 0.05
    ours = linear_probe(x, y, x, 3, l2)  # float32 L-BFGS
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).double().numpy()
    onehot = np.eye(3)[y.numpy()]

    def objective(theta):  # mean cross-entropy + l2/2·||W||², written independently in NumPy, with its gradient
        w, b = theta[:15].reshape(3, 5), theta[15:]
        logits = z @ w.T + b
        residual = (softmax(logits, axis=1) - onehot) / len(z)
        loss = -np.mean((log_softmax(logits, axis=1) * onehot).sum(1)) + 0.5 * l2 * (w**2).sum()
        return loss, np.concatenate([(residual.T @ z + l2 * w).ravel(), residual.sum(0)])

    best = minimize(objective, np.zeros(18), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    w, b = best.x[:15].reshape(3, 5), best.x[15:]
    np.testing.assert_allclose(ours.double().numpy(), softmax(z @ w.T + b, axis=1), atol=1e-4)


def test_l2_selection_prefers_strong_regularisation_on_noise_and_ties_to_the_larger():
    x, y = _blobs(20, 2, 4, 6.0, seed=1)  # separable: every l2 gives balanced accuracy 1
    best, scores = select_l2(x, y, x, y, 2, grid=(1e-3, 1e-1, 1.0))
    assert set(scores.values()) == {1.0} and best == 1.0


def test_knn_probe_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    scores = knn_probe(train, labels, torch.tensor([[2.0, 0.0]]), num_classes=2, k=2, temperature=0.5)
    # nearest by cosine: [1,0] (similarity 1, class 0) and [1,1] (1/√2, class 1); [0,1] (0) is out
    votes = torch.tensor([np.exp(1 / 0.5), np.exp(2**-0.5 / 0.5)])
    torch.testing.assert_close(scores, (votes / votes.sum())[None].float())


def test_metrics_on_a_known_case_average_over_present_classes():
    scores = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    targets = torch.tensor([0, 1, 1, 1])  # class 2 absent: it has no recall or AUROC to average
    metrics = classification_metrics(scores, targets, 3)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    # class 0 vs rest: 0.8 beats 0.3, 0.6, 0.2 → 1; class 1 vs rest: 0.1 is below 0.6, 0.3, 0.7 → 1
    assert metrics["auroc"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # class 0: P ½ R 1; class 1: P 1 R ⅔
    assert classification_metrics(scores, torch.tensor([1, 1, 1, 1]), 3)["auroc"] is None


def test_shots_exactly_k_per_class_from_distinct_cases_nested_and_seeded():
    labels = torch.tensor([0] * 12 + [1] * 8)
    cases = [f"p{i // 3}" for i in range(12)] + [f"q{i // 2}" for i in range(8)]  # 4 cases of each class
    for seed in range(5):
        one, four, six = (draw_shots(labels, k, seed, cases) for k in (1, 4, 6))
        assert torch.bincount(labels[six]).tolist() == [6, 6] and torch.bincount(labels[four]).tolist() == [4, 4]
        for label in (0, 1):  # four shots of a class with four cases: one from each case
            assert len({cases[i] for i in four.tolist() if labels[i] == label}) == 4
        assert set(one.tolist()) <= set(four.tolist()) <= set(six.tolist())
    assert torch.equal(draw_shots(labels, 4, 3, cases), draw_shots(labels, 4, 3, cases))
    first_cases = {cases[int(draw_shots(labels, 1, seed, cases)[0])] for seed in range(10)}
    assert len(first_cases) > 2  # the case a 1-shot draw comes from varies with the seed
    assert len({tuple(draw_shots(labels, 4, seed, cases).tolist()) for seed in range(10)}) > 5
    assert [o.tolist() for o in shot_order(labels, 0).values()] != [o.tolist() for o in shot_order(labels, 1).values()]
    with pytest.raises(ValueError, match="9-shot"):
        draw_shots(labels, 9, 0)


def test_few_shot_protocol():
    train_x, train_y, test_x, test_y = _blobs(30, 3, 8, 1.0, seed=2, sets=2)
    seen: list[torch.Tensor] = []

    def recording(tx, ty, qx, c):  # a probe that records what it trained on
        seen.append(ty.clone())
        return torch.full((len(qx), c), 1.0 / c)

    results = few_shot(train_x, train_y, test_x, test_y, shots=(1, 5, 40), folds=4, probe=recording)
    assert [torch.bincount(y).tolist() for y in seen] == [[1, 1, 1]] * 4 + [[5, 5, 5]] * 4
    assert "fewer than 40" in results[40]["skipped"]
    assert results[1]["mean"]["balanced_accuracy"] == pytest.approx(1 / 3) and results[1]["std"]["auroc"] == 0
    linear = few_shot(train_x, train_y, test_x, test_y, shots=(1, 10), folds=3)
    again = few_shot(train_x, train_y, test_x, test_y, shots=(1, 10), folds=3)
    assert linear == again and len(linear[10]["folds"]) == 3
    folds = [fold["balanced_accuracy"] for fold in linear[1]["folds"]]
    assert len(set(folds)) > 1  # folds draw different shots
    assert linear[1]["std"]["balanced_accuracy"] == pytest.approx(np.std(folds, ddof=1))
    assert linear[10]["mean"]["balanced_accuracy"] > linear[1]["mean"]["balanced_accuracy"] - 0.05
    knn = few_shot(train_x, train_y, test_x, test_y, shots=(10,), folds=2, probe="knn")
    assert knn[10]["mean"]["balanced_accuracy"] > 0.5


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_probe_is_sklearns_logistic_regression_with_c_1(classes):
    from sklearn.linear_model import LogisticRegression

    x, y, qx, _ = _blobs(12, classes, 5, spread=1.5, seed=classes, sets=2)
    x, qx = x * 3 + 2, qx * 3 + 2  # raw, unstandardised features: the probe must not rescale them
    theirs = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    ours = logistic_probe(x.double(), y, qx.double(), classes)
    np.testing.assert_allclose(ours.numpy(), theirs.predict_proba(qx.double().numpy()), atol=1e-5)


def test_few_shot_rest_tests_on_every_sample_not_drawn_and_never_on_a_drawn_case():
    x, y = _blobs(10, 2, 4, spread=3.0, seed=5)
    cases = [f"case-{i // 2}" for i in range(len(y))]  # pairs of samples share a case (and a class)
    seen: list[tuple[set, set]] = []

    def recording(train_x, train_y, test_x, num_classes):
        rows = {tuple(r.tolist()) for r in train_x}
        tested = {tuple(r.tolist()) for r in test_x}
        seen.append((rows, tested))
        return torch.full((len(test_x), num_classes), 1.0 / num_classes)

    results = few_shot_rest(x, y, shots=(1, 3), folds=2, probe=recording, cases=cases)
    assert set(results) == {1, 3} and len(seen) == 4
    index = {tuple(r.tolist()): i for i, r in enumerate(x)}
    for (train, tested), k in zip(seen, [1, 1, 3, 3]):
        drawn_cases = {cases[index[r]] for r in train}
        assert len(train) == 2 * k and not drawn_cases & {cases[index[r]] for r in tested}
        assert len(tested) == len(y) - 2 * len(drawn_cases)  # everything else: both samples of each drawn case out
    real = few_shot_rest(x, y, shots=(1, 3), folds=3, probe="logistic", cases=cases)
    assert real[3]["mean"]["auroc"] > 0.9 and len(real[3]["folds"]) == 3
    assert "skipped" in few_shot_rest(x, y, shots=(11,), folds=2)[11]
