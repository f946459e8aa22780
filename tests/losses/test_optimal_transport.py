"""The entropic OT solver against POT, a closed form and the Sinkhorn-Knopp it replaced in SwAV."""

from __future__ import annotations

import ot
import pytest
import torch

from medssl.losses import sinkhorn, sinkhorn_knopp
from medssl.nn.distributed import all_reduce_max, all_reduce_sum
from tests.ddp import on_two_processes


def previous_sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """``sinkhorn_knopp`` as it was before it called :func:`sinkhorn` (one process)."""
    shift = scores.max()
    q = torch.exp((scores - shift) / epsilon).T.double()  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T.float()


def cosine_scores(batch: int, prototypes: int, seed: int) -> torch.Tensor:
    """Scores as SwAV makes them: unit projections against unit prototypes, in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(batch, 16, generator=generator), dim=1)
    c = torch.nn.functional.normalize(torch.randn(prototypes, 16, generator=generator), dim=1)
    return z @ c.T


def unit_span_scores(batch: int, prototypes: int, seed: int) -> torch.Tensor:
    """Scores spanning exactly 1, so ε = 1/80 is as small as the previous float32 kernel could go without
    underflow (exp(−80) is still a normal float32)."""
    scores = torch.randn(batch, prototypes, generator=torch.Generator().manual_seed(seed))
    return (scores - scores.min()) / (scores.max() - scores.min())


@pytest.mark.parametrize("batch, prototypes", [(8, 8), (12, 5), (5, 12), (64, 30)])
@pytest.mark.parametrize("scores, epsilon", [(cosine_scores, 0.05), (cosine_scores, 0.025), (unit_span_scores, 0.0125)])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_knopp_equals_its_previous_algorithm(batch, prototypes, scores, epsilon, iterations):
    scores = scores(batch, prototypes, seed=batch * prototypes + iterations)
    old = previous_sinkhorn_knopp(scores, epsilon, iterations)
    new = sinkhorn_knopp(scores, epsilon, iterations)
    assert new.dtype == old.dtype == torch.float32 and new.shape == (batch, prototypes)
    # The previous kernel exp((s − max) / ε) was rounded in float32 (relative error up to ~span/ε · 2^-24);
    # that is the whole difference: computed in float64 it gives the same float32 result bit for bit.
    torch.testing.assert_close(new, old, rtol=0, atol=5e-6)
    assert torch.equal(
        sinkhorn_knopp(scores.double(), epsilon, iterations),
        previous_sinkhorn_knopp(scores.double(), epsilon, iterations),
    )


def test_sinkhorn_knopp_stays_finite_where_the_kernel_underflows():
    """Scores spanning more than ~100 ε underflowed exp(scores / ε) in float32 and gave 0/0 before."""
    scores = torch.randn(16, 6) * 3
    assert torch.isnan(previous_sinkhorn_knopp(scores, 0.01, 3)).any()
    q = sinkhorn_knopp(scores, 0.01, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))


def random_problem(n: int, m: int, seed: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=generator, dtype=dtype) + 0.2
    b = torch.rand(m, generator=generator, dtype=dtype) + 0.2
    x, y = torch.randn(n, 3, generator=generator, dtype=dtype), torch.randn(m, 3, generator=generator, dtype=dtype)
    cost = torch.cdist(x, y)
    return cost, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("n, m, epsilon", [(5, 5, 0.5), (7, 4, 0.1), (3, 9, 0.05)])
def test_each_iteration_equals_pot_log_sinkhorn(n, m, epsilon):
    cost, a, b = random_problem(n, m, seed=n * m)
    for iterations in (1, 2, 7):
        expected = ot.sinkhorn(
            a.numpy(),
            b.numpy(),
            cost.numpy(),
            epsilon,
            method="sinkhorn_log",
            numItermax=iterations,
            stopThr=0,
            warn=False,
        )
        plan = sinkhorn(cost, a, b, epsilon, iterations)
        torch.testing.assert_close(plan, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(plan.sum(dim=1), a, rtol=1e-12, atol=1e-12)  # rows exact at every iteration


@pytest.mark.parametrize("n, m, epsilon", [(6, 6, 0.3), (8, 5, 0.1), (4, 10, 0.05)])
def test_converged_plan_equals_pot_and_meets_both_marginals(n, m, epsilon):
    cost, a, b = random_problem(n, m, seed=n + m)
    expected = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), epsilon, numItermax=20000, stopThr=1e-13)
    plan = sinkhorn(cost, a, b, epsilon, iterations=20000, tolerance=1e-12)
    torch.testing.assert_close(plan, torch.from_numpy(expected), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(plan.sum(dim=1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(plan.sum(dim=0), b, rtol=0, atol=1e-11)


def test_tolerance_stops_once_the_columns_are_within_it():
    cost, a, b = random_problem(6, 9, seed=3)
    loose = sinkhorn(cost, a, b, 0.1, iterations=10000, tolerance=1e-3)
    assert 0 < float((loose.sum(dim=0) - b).abs().sum()) < 1e-3
    assert not torch.allclose(loose, sinkhorn(cost, a, b, 0.1, iterations=2000), rtol=0, atol=1e-9)


def test_uniform_marginals_by_default_and_batches_solve_independently():
    problems = [random_problem(5, 7, seed=s) for s in range(3)]
    cost = torch.stack([p[0] for p in problems])
    a, b = torch.stack([p[1] for p in problems]), torch.stack([p[2] for p in problems])
    batched = sinkhorn(cost, a, b, 0.2, iterations=50)
    for i, (c, a_i, b_i) in enumerate(problems):
        torch.testing.assert_close(batched[i], sinkhorn(c, a_i, b_i, 0.2, iterations=50), rtol=1e-12, atol=1e-15)
    uniform = sinkhorn(cost, epsilon=0.2, iterations=500, tolerance=1e-12)
    torch.testing.assert_close(uniform.sum(dim=-1), torch.full((3, 5), 1 / 5, dtype=torch.float64))
    torch.testing.assert_close(uniform.sum(dim=-2), torch.full((3, 7), 1 / 7, dtype=torch.float64))
    shared_b = sinkhorn(cost, a, b[0], 0.2, iterations=50)  # one marginal broadcast over the batch
    torch.testing.assert_close(shared_b[0], batched[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_epsilon_concentrates_on_the_optimal_permutation(dtype):
    """In 1-D with a convex cost the optimal plan is the monotone matching: i-th smallest to i-th smallest."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randperm(6, generator=generator) / 6
    y = torch.randperm(6, generator=generator) / 6 + 0.05
    permutation = torch.empty(6, dtype=torch.long)
    permutation[x.argsort()] = y.argsort()
    cost = (x[:, None] - y[None, :]).square().to(dtype)
    exact = torch.zeros(6, 6, dtype=dtype)
    exact[torch.arange(6), permutation] = 1 / 6
    # exp(−cost / ε) underflows to 0 for most entries, even in float64: only the log domain works here
    for epsilon, distance in [(1e-3, 1e-5), (2.5e-4, 1e-7)]:  # the leak off the permutation shrinks with ε
        plan = sinkhorn(cost, epsilon=epsilon, iterations=1000, tolerance=1e-9)
        assert torch.isfinite(plan).all()
        assert (plan.argmax(dim=1) == permutation).all()
        torch.testing.assert_close(plan, exact, rtol=0, atol=distance)
        assert float((plan * cost).sum()) == pytest.approx(float((exact * cost).sum()), abs=distance)


def test_half_precision_cost_is_solved_in_float32():
    cost, a, b = random_problem(4, 6, seed=1)
    plan = sinkhorn(cost.bfloat16(), a, b, 0.5, iterations=20)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, sinkhorn(cost.bfloat16().float(), a.float(), b.float(), 0.5, 20))


def test_gradients_flow_through_the_unrolled_iterations():
    cost, a, b = random_problem(4, 3, seed=2)
    cost.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: (sinkhorn(c, a, b, 0.3, iterations=5) * c).sum(), (cost,))


def test_arguments_are_checked():
    cost = torch.rand(3, 4)
    with pytest.raises(ValueError, match="both reduce_sum and reduce_max"):
        sinkhorn(cost, reduce_sum=all_reduce_sum)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(cost, iterations=0)
    with pytest.raises(ValueError, match="n, m"):
        sinkhorn(torch.rand(4))


# Rows split over two gloo processes: with all_reduce_sum/max the plan is the single-process plan's rows.
N, M = 10, 4


def split_problem():
    cost, a, b = random_problem(N, M, seed=7)
    a = a * torch.linspace(0.5, 1.5, N, dtype=torch.float64)  # non-uniform, and unequal across the halves
    return cost, a / a.sum(), b


def _worker(rank: int) -> tuple:
    cost, a, b = split_problem()
    rows = slice(0, 3) if rank == 0 else slice(3, N)  # unequal shards
    kwargs = dict(epsilon=0.05, reduce_sum=all_reduce_sum, reduce_max=all_reduce_max)
    return (
        sinkhorn(cost[rows], a[rows], b, iterations=3, **kwargs),
        sinkhorn(cost[rows], a[rows], b, iterations=5000, tolerance=1e-9, **kwargs),
        sinkhorn(cost[rows], iterations=4, **kwargs),
    )


def test_rows_split_across_two_processes_equal_one_process():
    cost, a, b = split_problem()
    expected = (
        sinkhorn(cost, a, b, 0.05, iterations=3),
        sinkhorn(cost, a, b, 0.05, iterations=5000, tolerance=1e-9),
        sinkhorn(cost, epsilon=0.05, iterations=4),
    )
    ranks = on_two_processes(_worker)
    for got, want in zip(zip(ranks[0], ranks[1], strict=True), expected, strict=True):
        torch.testing.assert_close(torch.cat(got), want, rtol=1e-10, atol=1e-13)
