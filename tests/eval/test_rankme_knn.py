"""RankMe's defining properties and the weighted kNN classifier."""

from __future__ import annotations

import pytest
import torch

from medssl.eval import knn_predict, rankme


def test_rankme_properties():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 16, dtype=torch.float64))  # orthonormal columns
    assert rankme(q) == pytest.approx(16, rel=1e-4)
    assert rankme(torch.randn(200, 1) @ torch.randn(1, 16)) == pytest.approx(1.0, abs=1e-3)
    z = torch.randn(300, 8, dtype=torch.float64)
    assert rankme(5 * z) == pytest.approx(rankme(z), rel=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    assert rankme(z @ rotation) == pytest.approx(rankme(z), rel=1e-9)
    assert rankme(z[torch.randperm(300)]) == pytest.approx(rankme(z), rel=1e-9)
    dropped = z.clone()
    dropped[:, 0] = 0
    assert rankme(dropped) < rankme(z)


def test_knn_by_hand_and_on_separated_clusters():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_predict(train, labels, torch.tensor([[1.0, 0.2]]), num_classes=2, k=2, temperature=1.0)
    q = torch.nn.functional.normalize(torch.tensor([1.0, 0.2]), dim=0)
    t = torch.nn.functional.normalize(train, dim=1)
    expected = torch.exp(q @ t[0]) + torch.exp(q @ t[1])
    torch.testing.assert_close(scores, torch.tensor([[float(expected), 0.0]]))
    torch.manual_seed(1)
    centres = torch.randn(3, 10) * 5
    train = torch.cat([c + torch.randn(30, 10) for c in centres])
    test = torch.cat([c + torch.randn(10, 10) for c in centres])
    predicted = knn_predict(train, torch.arange(3).repeat_interleave(30), test, num_classes=3, chunk=7).argmax(1)
    assert (predicted == torch.arange(3).repeat_interleave(10)).float().mean() == 1.0


def test_linear_probe_reaches_the_optimum_scipy_finds():
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    from medssl.eval import fit_linear_probe

    torch.manual_seed(2)
    x, y = torch.randn(60, 4, dtype=torch.float64), torch.randint(0, 3, (60,))
    weight, bias, mean, std = fit_linear_probe(x, y, 3, l2=0.1)
    z = ((x - mean) / std).numpy()

    def objective(theta):  # the same objective, written independently in NumPy
        w, b = theta[:12].reshape(3, 4), theta[12:]
        logits = z @ w.T + b
        return float(np.mean(logsumexp(logits, axis=1) - logits[np.arange(60), y.numpy()]) + 0.05 * (w**2).sum())

    best = minimize(objective, np.zeros(15), method="BFGS", options={"gtol": 1e-10})
    ours = np.concatenate([weight.numpy().ravel(), bias.numpy()])
    assert objective(ours) == pytest.approx(best.fun, abs=1e-8)
    np.testing.assert_allclose(ours, best.x, atol=1e-4)


def test_linear_probe_accuracy_separable_and_chance():
    from medssl.eval import linear_probe_accuracy

    torch.manual_seed(3)
    labels = torch.arange(2).repeat(50)
    separable = torch.randn(100, 8) + 4 * torch.nn.functional.one_hot(labels, 8)
    assert linear_probe_accuracy(separable, labels) == 1.0
    with torch.inference_mode():  # as inside Trainer.validate
        assert linear_probe_accuracy(separable.clone(), labels.clone()) == 1.0
    assert linear_probe_accuracy(torch.randn(400, 8), torch.randint(0, 2, (400,))) < 0.6
    assert linear_probe_accuracy(separable, torch.zeros(100, dtype=torch.long)) is None
