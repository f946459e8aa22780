"""Losses against MONAI, naive loops and hand computations on small inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from medssl.losses import DINOLoss, barlow_twins, info_nce, sinkhorn_knopp, supervised_contrastive, swapped_prediction


@pytest.fixture
def views():
    torch.manual_seed(0)
    return torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)


def naive_nt_xent(z1, z2, t, decoupled=False):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i and not (decoupled and k == j)]
        losses.append(-math.log(math.exp(float(z[i] @ z[j]) / t) / sum(sims)))
    return sum(losses) / len(losses)


def test_info_nce_equals_monai_and_a_naive_loop(views):
    z1, z2 = views
    assert float(info_nce(z1, z2, 0.5)) == pytest.approx(float(ContrastiveLoss(temperature=0.5)(z1, z2)), rel=1e-6)
    assert float(info_nce(z1, z2, 0.2)) == pytest.approx(naive_nt_xent(z1, z2, 0.2), rel=1e-9)
    assert float(info_nce(z1, z2, 0.2, decoupled=True)) == pytest.approx(naive_nt_xent(z1, z2, 0.2, True), rel=1e-9)


def test_info_nce_is_lower_for_aligned_views(views):
    z1, _ = views
    assert info_nce(z1, z1 + 0.01 * torch.randn_like(z1)) < info_nce(z1, torch.randn_like(z1))


def test_supcon_with_pair_positives_is_nt_xent(views):
    z1, z2 = views
    z = torch.cat([z1, z2])
    n = len(z1)
    pairs = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    idx = torch.arange(n)
    pairs[idx, idx + n] = pairs[idx + n, idx] = True
    got = supervised_contrastive(z, z, pairs, temperature=0.2, self_mask=torch.eye(2 * n, dtype=torch.bool))
    assert float(got) == pytest.approx(naive_nt_xent(z1, z2, 0.2), rel=1e-9)


def test_supcon_by_hand_with_several_positives_and_no_positive():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    s = torch.tensor([1.0, 0.0, 1 / math.sqrt(2)], dtype=torch.float64) / 0.5
    log_prob = s - torch.logsumexp(s, 0)
    expected = -(log_prob[0] + log_prob[2]) / 2  # anchor 2 has no positive and is left out
    assert float(supervised_contrastive(anchors, keys, mask, temperature=0.5)) == pytest.approx(float(expected))


def test_barlow_twins_by_its_formula(views):
    z1, z2 = views
    n = len(z1)
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    c = [[float((a[:, i] * b[:, j]).sum() / n) for j in range(5)] for i in range(5)]
    expected = sum((1 - c[i][i]) ** 2 for i in range(5)) + 5e-3 * sum(
        c[i][j] ** 2 for i in range(5) for j in range(5) if i != j
    )
    assert float(barlow_twins(z1, z2, 5e-3, eps=0.0)) == pytest.approx(expected, rel=1e-9)
    assert float(barlow_twins(z1, z1, eps=0.0)) == pytest.approx(5e-3 * _offdiag_sq(a), rel=1e-9)


def _offdiag_sq(a):
    c = a.T @ a / len(a)
    return float(c.pow(2).sum() - torch.diagonal(c).pow(2).sum())


def test_sinkhorn_equipartition_and_against_numpy_loop():
    torch.manual_seed(1)
    scores = torch.randn(12, 4)
    q = sinkhorn_knopp(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0), atol=1e-3, rtol=0)
    # An independent loop over the same three steps.
    import numpy as np

    p = np.exp(scores.numpy().T.astype(np.float64) / 0.05)
    p /= p.sum()
    for _ in range(3):
        p /= p.sum(axis=1, keepdims=True) * 4
        p /= p.sum(axis=0, keepdims=True) * 12
    np.testing.assert_allclose(sinkhorn_knopp(scores, 0.05, 3).numpy(), (p * 12).T, rtol=1e-5)


def test_swapped_prediction_by_hand():
    s1, s2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])
    log_p1, log_p2 = torch.log_softmax(s1 / 0.5, 1), torch.log_softmax(s2 / 0.5, 1)
    expected = -0.5 * (float((q2 * log_p1).sum()) + float((q1 * log_p2).sum()))
    assert float(swapped_prediction([s1, s2], [q1, q2], 0.5)) == pytest.approx(expected)


def test_swapped_prediction_multi_crop_against_explicit_sum():
    torch.manual_seed(3)
    scores = [torch.randn(5, 4) for _ in range(4)]  # 2 global + 2 local crops
    codes = [torch.softmax(torch.randn(5, 4), 1) for _ in range(2)]
    total = 0.0
    for i in range(2):  # each global code against the three other crops, by an explicit loop
        for v in range(4):
            if v != i:
                for b in range(5):
                    total += -sum(
                        float(codes[i][b, k]) * float(torch.log_softmax(scores[v][b] / 0.1, 0)[k]) for k in range(4)
                    ) / (5 * 3 * 2)
    assert float(swapped_prediction(scores, codes, 0.1)) == pytest.approx(total, rel=1e-5)
    with pytest.raises(ValueError):
        swapped_prediction(scores[:1], codes[:1])


def test_dino_loss_pairs_views_and_updates_its_centre():
    torch.manual_seed(2)
    loss = DINOLoss(dim=3, student_temperature=0.1, center_momentum=0.9)
    teacher = torch.randn(4, 3)  # 2 global views × batch 2
    student = torch.randn(8, 3)  # 4 views × batch 2
    value = loss(student, teacher, n_teacher_views=2, teacher_temperature=0.04)
    log_s = torch.log_softmax(student / 0.1, 1).chunk(4)
    probs = torch.softmax(teacher / 0.04, 1).chunk(2)  # centre starts at 0
    terms = [-(probs[t] * log_s[s]).sum(1).mean() for t in range(2) for s in range(4) if s != t]
    assert float(value) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-6)
    torch.testing.assert_close(loss.center, 0.1 * teacher.mean(0, keepdim=True))


def test_losses_run_in_float32_under_autocast():
    torch.manual_seed(4)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    reference = {"nce": info_nce(z1, z2, 0.05), "bt": barlow_twins(z1, z2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = (z1 @ torch.eye(8)), (z2 @ torch.eye(8))  # bfloat16 activations, as a projector gives
        assert a.dtype == torch.bfloat16
        mixed = {"nce": info_nce(a, b, 0.05), "bt": barlow_twins(a, b)}
    for name, value in mixed.items():
        assert value.dtype == torch.float32
        # only the bf16 rounding of the inputs remains, not bf16 arithmetic inside the loss
        assert float(value) == pytest.approx(float(reference[name]), rel=2e-2), name


def test_symmetric_info_nce_by_hand():
    from medssl.losses import symmetric_info_nce

    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # rows normalise to e1, e2
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # e1 and (e1 + e2)/√2
    s = 1 / math.sqrt(2)
    logits = torch.tensor([[1.0, s], [0.0, s]]) / 0.5  # cos(a_i, b_j) / τ
    forward = -(torch.log_softmax(logits, 1).diagonal()).mean()  # each a picks its b
    backward = -(torch.log_softmax(logits.T, 1).diagonal()).mean()  # each b picks its a
    expected = 0.5 * (forward + backward)
    torch.testing.assert_close(symmetric_info_nce(a, b, temperature=0.5), expected)
    by_hand = 0.5 * (
        0.5 * (math.log(math.exp(2) + math.exp(2 * s)) - 2 + math.log(1 + math.exp(2 * s)) - 2 * s)
        + 0.5 * (math.log(math.exp(2) + 1) - 2 + math.log(math.exp(2 * s) + math.exp(2 * s)) - 2 * s)
    )
    assert float(expected) == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        symmetric_info_nce(a, b[:1])
