"""Matching solvers against brute force, planted matchings, and the sign conventions of I-MLE."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import hamming
from medssl.matching import (
    brute_force_matching,
    edge_indicator,
    edges_from_adjacency,
    graph_matching,
    gumbel_noise,
    imle_matching,
    knn_edges,
    linear_assignment,
    linear_matching,
    matching_objective,
)
from medssl.matching.solvers import EdgePairs, PermutationObjective, swap_local_search


def lvm_med_affinities(source: torch.Tensor, target: torch.Tensor, k: int):
    """Affinities as LVM-Med builds them: cosine of node features and of edge difference vectors."""
    es, et = knn_edges(source, k), knn_edges(target, k)

    def edge_vectors(x, e):
        return torch.stack([x[b, e[b, :, 0]] - x[b, e[b, :, 1]] for b in range(len(x))])

    unary = F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    edges = F.normalize(edge_vectors(source, es), dim=-1) @ F.normalize(edge_vectors(target, et), dim=-1).transpose(
        1, 2
    )
    return unary, edges, es, et


def planted(batch: int, n: int, noise: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(batch, n, 8, generator=generator)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(batch)])
    target = torch.stack([s[p] for s, p in zip(source, perms)]) + noise * torch.randn(batch, n, 8, generator=generator)
    truth = F.one_hot(perms.argsort(dim=1), n).float()  # source i sits at target position perm⁻¹(i)
    return source, target, truth


def is_permutation(v: torch.Tensor) -> bool:
    return bool(((v == 0) | (v == 1)).all() and (v.sum(-1) == 1).all() and (v.sum(-2) == 1).all())


def test_linear_assignment_equals_brute_force_on_unary_only():
    scores = torch.randn(10, 5, generator=torch.Generator().manual_seed(0)).view(2, 5, 5).repeat(4, 1, 1)
    scores = scores + torch.randn(8, 5, 5, generator=torch.Generator().manual_seed(1))
    v = linear_assignment(scores)
    assert v.shape == (8, 5, 5) and is_permutation(v)
    assert torch.equal(v, brute_force_matching(scores))
    assert torch.equal(linear_assignment(scores[0]), v[0])
    assert torch.equal(graph_matching(scores), v)  # no edges: second-order solver is the LAP


def test_objective_matches_explicit_sum():
    generator = torch.Generator().manual_seed(2)
    n = 5
    es, et = knn_edges(torch.randn(n, 3, generator=generator), 2), knn_edges(torch.randn(n, 3, generator=generator), 2)
    unary, ce = torch.randn(n, n, generator=generator), torch.randn(len(es), len(et), generator=generator)
    v = F.one_hot(torch.randperm(n, generator=generator), n).float()
    explicit = (unary * v).sum() + sum(
        ce[s, t] * v[i, a] * v[j, b] for s, (i, j) in enumerate(es.tolist()) for t, (a, b) in enumerate(et.tolist())
    )
    assert matching_objective(v, unary, ce, es, et) == pytest.approx(float(explicit), abs=1e-5)
    indicator = edge_indicator(v, es, et)
    assert (unary * v).sum() + (ce * indicator).sum() == pytest.approx(float(explicit), abs=1e-5)


def test_swap_gains_are_exact():
    generator = torch.Generator().manual_seed(3)
    b, n = 3, 6
    es, et = (
        knn_edges(torch.randn(b, n, 3, generator=generator), 2),
        knn_edges(torch.randn(b, n, 3, generator=generator), 2),
    )
    unary = torch.randn(b, n, n, generator=generator, dtype=torch.float64)
    ce = torch.randn(b, es.shape[1], et.shape[1], generator=generator, dtype=torch.float64)
    v = F.one_hot(torch.stack([torch.randperm(n, generator=generator) for _ in range(b)]), n).double()
    pairs = EdgePairs(es, et, b, n, torch.float64, v.device)
    objective = PermutationObjective(unary, ce, pairs)
    perm = v.argmax(-1)
    torch.testing.assert_close(objective.score(perm), matching_objective(v, unary, ce, es, et))
    torch.testing.assert_close(objective.gradient(perm), unary + pairs.quadratic_gradient(v, ce))
    gains = objective.swap_gains(perm)
    before = matching_objective(v, unary, ce, es, et)
    for i, j in itertools.permutations(range(n), 2):
        perm = v.argmax(-1)
        perm[:, [i, j]] = perm[:, [j, i]]
        after = matching_objective(F.one_hot(perm, n).double(), unary, ce, es, et)
        torch.testing.assert_close(after - before, gains[:, i, j])


@pytest.mark.parametrize("n", [4, 5, 6])
def test_second_order_close_to_brute_force(n):
    generator = torch.Generator().manual_seed(n)
    source, target = torch.randn(12, n, 6, generator=generator), torch.randn(12, n, 6, generator=generator)
    unary, ce, es, et = lvm_med_affinities(source, target, k=2)
    exact = matching_objective(brute_force_matching(unary, ce, es, et), unary, ce, es, et)
    found = graph_matching(unary, ce, es, et)
    assert is_permutation(found)
    score = matching_objective(found, unary, ce, es, et)
    linear = matching_objective(linear_matching(unary), unary, ce, es, et)
    assert (score >= linear - 1e-5).all()  # started from the LAP: never worse than first order
    gap = (exact - score) / exact.abs().mean()
    # IPFP + 2-exchange is a heuristic: on 200 such instances per size it is exact on 87–98% with a mean
    # gap under 1% and a worst case near 20% (n = 6); the linear-only matching's mean gap is 6–14%.
    assert (gap < 1e-5).float().mean() >= 0.75
    assert gap.mean() <= 0.02 and gap.max() <= 0.25


def noisy_training_problems(batch: int, n: int, k: int, seed: int):
    """Problems as LVM-Med trains on them early on: unrelated random unit vectors (cosines near 0) for
    the two views, kNN edges, and Gumbel(0, 1) noise on both affinities (``noise_scale`` 1)."""
    generator = torch.Generator().manual_seed(seed)
    source, target = torch.randn(batch, n, 128, generator=generator), torch.randn(batch, n, 128, generator=generator)
    unary, ce, es, et = lvm_med_affinities(source, target, k)
    return (
        unary + gumbel_noise(unary.shape, generator),
        ce + gumbel_noise(ce.shape, generator),
        es,
        et,
    )


def random_start_reference(unary, ce, es, et, starts: int, seed: int) -> torch.Tensor:
    """Best objective of ``starts`` pairwise-exchange searches from random permutations, per problem: an
    independent multi-start reference that shares only the move set with :func:`graph_matching`."""
    batch, n = unary.shape[:2]
    generator = torch.Generator().manual_seed(seed)
    pairs = EdgePairs(es, et, batch, n, unary.dtype, unary.device)
    objective = PermutationObjective(unary, ce, pairs, graph=torch.arange(batch).repeat(starts))
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(batch * starts)])
    perms = swap_local_search(perms, objective, max_swaps=10 * n * n, tolerance=1e-6)
    best = objective.score(perms).view(starts, batch).amax(dim=0)
    found = matching_objective(
        F.one_hot(perms, n).to(unary.dtype),
        unary.repeat(starts, 1, 1),
        ce.repeat(starts, 1, 1),
        es.repeat(starts, 1, 1),
        et.repeat(starts, 1, 1),
    )
    torch.testing.assert_close(found.view(starts, batch).amax(dim=0), best)  # look-up scores = dense scores
    return best


def test_close_to_multistart_reference_under_training_noise():
    """n = 16, k = 5, Gumbel(0, 1) on both affinities: the training setting, where IPFP alone stops far
    from the optimum. Measured on two problem seeds against 64 random-start searches: restarts = 8 (the
    default) mean gap 0.1–0.7 %, worst 5.9 %; the old solver (restarts = 0) mean 3.3–5.3 %, worst 13–14 %."""
    unary, ce, es, et = noisy_training_problems(batch=16, n=16, k=5, seed=1)
    reference = random_start_reference(unary, ce, es, et, starts=64, seed=0)
    found = graph_matching(unary, ce, es, et)
    assert is_permutation(found)
    gap = (reference - matching_objective(found, unary, ce, es, et)) / reference.abs()
    assert gap.mean() <= 0.015 and gap.max() <= 0.08, gap


def test_restarts_are_deterministic_and_never_hurt():
    unary, ce, es, et = noisy_training_problems(batch=6, n=12, k=5, seed=3)
    first = graph_matching(unary, ce, es, et)
    assert torch.equal(first, graph_matching(unary, ce, es, et))  # I-MLE's backward solve sees the same starts
    plain = matching_objective(graph_matching(unary, ce, es, et, restarts=0), unary, ce, es, et)
    assert (matching_objective(first, unary, ce, es, et) >= plain - 1e-5).all()


def test_recovers_planted_matching():
    source, target, truth = planted(batch=8, n=12, noise=0.3, seed=4)
    unary, ce, es, et = lvm_med_affinities(source, target, k=4)
    assert torch.equal(graph_matching(unary, ce, es, et), truth)


def test_second_order_recovers_planted_matching_from_edges_alone():
    source, target, truth = planted(batch=8, n=10, noise=0.05, seed=5)
    _, ce, es, et = lvm_med_affinities(source, target, k=4)
    found = graph_matching(torch.zeros_like(truth), ce, es, et)
    assert (found == truth).all(dim=(1, 2)).float().mean() >= 0.75


def test_padded_edges_from_adjacency_are_ignored():
    generator = torch.Generator().manual_seed(6)
    n = 5
    adjacency = (torch.rand(2, n, n, generator=generator) < 0.4).float() * (1 - torch.eye(n))
    adjacency[1] = 0
    adjacency[1, 0, 1] = 1  # second graph: one edge, so the first pads it
    es = edges_from_adjacency(adjacency)
    assert (es[1, 1:] == -1).all()
    et = knn_edges(torch.randn(2, n, 3, generator=generator), 2)
    unary, ce = torch.randn(2, n, n, generator=generator), torch.randn(2, es.shape[1], et.shape[1], generator=generator)
    v = brute_force_matching(unary, ce, es, et)
    trimmed = matching_objective(v[1], unary[1], ce[1, :1], es[1, :1], et[1])
    assert matching_objective(v, unary, ce, es, et)[1] == pytest.approx(float(trimmed), abs=1e-5)
    assert torch.allclose(
        matching_objective(graph_matching(unary, ce, es, et), unary, ce, es, et),
        matching_objective(v, unary, ce, es, et),
        atol=0.5,
    )


def test_imle_gradient_signs_on_two_by_two():
    theta = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], requires_grad=True)  # MAP: the swap, Hamming 4
    v, _ = imle_matching(theta, solver=linear_matching, lam=80.0, noise=False)
    assert torch.equal(v[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    hamming(v).backward()
    assert theta.grad is not None
    # θ' = θ − 80(1 − 2I) makes the identity the MAP: grad = (v~ − I)/λ, negative on the diagonal
    torch.testing.assert_close(theta.grad[0], torch.tensor([[-1.0, 1.0], [1.0, -1.0]]) / 80)


def test_imle_edge_gradient_signs():
    edges = torch.tensor([[0, 1], [1, 0]])
    unary = torch.tensor([[[0.0, 0.5], [0.5, 0.0]]], requires_grad=True)
    ce = torch.zeros(1, 2, 2, requires_grad=True)
    v, e = imle_matching(unary, ce, edges, edges, lam=80.0, noise=False)
    assert e is not None
    torch.testing.assert_close(e[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # (0,1)↦(1,0) and (1,0)↦(0,1)
    hamming(v).backward()
    assert ce.grad is not None
    assert (ce.grad[0].diagonal() < 0).all() and (ce.grad[0].fliplr().diagonal() > 0).all()


@pytest.mark.parametrize("solver", [graph_matching, linear_matching])
def test_sgd_through_imle_lowers_hamming(solver):
    generator = torch.Generator().manual_seed(7)
    b, n = 4, 8
    es, et = (
        knn_edges(torch.randn(b, n, 3, generator=generator), 3),
        knn_edges(torch.randn(b, n, 3, generator=generator), 3),
    )
    theta_v = (torch.randn(b, n, n, generator=generator) - torch.eye(n)).requires_grad_()  # a wrong start
    theta_e = (0.1 * torch.randn(b, es.shape[1], et.shape[1], generator=generator)).requires_grad_()
    optimiser = torch.optim.SGD([theta_v, theta_e], lr=40.0)
    losses = []
    for step in range(8):
        v, _ = imle_matching(theta_v, theta_e, es, et, solver=solver, noise=True, noise_temperature=0.1, generator=step)
        loss = hamming(v)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] > 8 and losses[-1] < losses[0] / 2


def test_gumbel_noise_is_reproducible_and_gumbel():
    a, b = gumbel_noise((4, 5), generator=3), gumbel_noise((4, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, gumbel_noise((4, 5), generator=4))
    assert gumbel_noise((20000,), generator=0).mean().item() == pytest.approx(0.5772, abs=0.03)  # Euler–Mascheroni
    unary = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(8))
    first, _ = imle_matching(unary, generator=11)
    assert torch.equal(first, imle_matching(unary, generator=11)[0])
    assert torch.equal(imle_matching(unary, noise=False)[0], linear_assignment(unary))
