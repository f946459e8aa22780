"""IPOT, Gromov-Wasserstein and MADELEINE's Graph Optimal Transport loss against POT (exact LP, conditional-
gradient GW), the paper's multiplicative IPOT, finite differences and the properties the loss must have."""

from __future__ import annotations

from typing import Literal, cast

import ot
import pytest
import torch

from medssl.losses import graph_optimal_transport, gromov_wasserstein, ipot, sample_tokens

F64 = torch.float64


def transport_problem(n: int, m: int, seed: int):
    """Euclidean cost between random 3-D points with random positive marginals (a unique LP optimum a.s.)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=generator, dtype=F64) + 0.2
    b = torch.rand(m, generator=generator, dtype=F64) + 0.2
    x, y = torch.randn(n, 3, generator=generator, dtype=F64), torch.randn(m, 3, generator=generator, dtype=F64)
    return torch.cdist(x, y), a / a.sum(), b / b.sum()


def batched_problems(n: int, m: int, seeds=range(4)):
    problems = [transport_problem(n, m, s) for s in seeds]
    return tuple(torch.stack([p[k] for p in problems]) for k in range(3))


def emd2(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [ot.emd2(a_i.numpy(), b_i.numpy(), c_i.numpy()) for c_i, a_i, b_i in zip(cost, a, b)], dtype=F64
    )


def multiplicative_ipot(cost, beta, iterations, a, b):
    """Xie et al.'s Algorithm 1 as written (one Sinkhorn step per proximal step), for one problem."""
    kernel, plan, sigma = torch.exp(-cost / beta), torch.ones_like(cost), torch.ones_like(b)
    for _ in range(iterations):
        q = kernel * plan
        delta = a / (q @ sigma)
        sigma = b / (q.T @ delta)
        plan = delta[:, None] * q * sigma[None, :]
    return plan


@pytest.mark.parametrize("n, m", [(5, 5), (5, 8), (8, 5), (8, 8)])
def test_ipot_approaches_the_exact_transport_cost(n, m):
    cost, a, b = batched_problems(n, m)
    exact = emd2(cost, a, b)
    converged = (cost * ipot(cost, beta=0.5, iterations=2000, a=a, b=b)).sum(dim=(-2, -1))
    # IPOT tends to the exact LP value for any β; measured gaps after 2000 steps ≤ 4.3e-6 relative over
    # these 16 problems (the rows converge last, ~1e-4 in L1), so 3e-5 leaves a 7× margin.
    torch.testing.assert_close(converged, exact, rtol=3e-5, atol=0)
    # MADELEINE's setting (β = 0.5, 30 steps) is a few loose proximal steps: measured ≤ 1.1e-2 relative
    # over 24 such problems (above or below: the rows are not yet exact), so 3e-2.
    loose = (cost * ipot(cost, beta=0.5, iterations=30, a=a, b=b)).sum(dim=(-2, -1))
    torch.testing.assert_close(loose, exact, rtol=3e-2, atol=0)


@pytest.mark.parametrize("uniform", [True, False])
def test_ipot_plan_meets_both_marginals(uniform):
    cost, a, b = batched_problems(6, 9)
    if uniform:
        a, b = torch.full((6,), 1 / 6, dtype=F64), torch.full((9,), 1 / 9, dtype=F64)
        plans = [ipot(cost, 0.5, steps) for steps in (30, 2000)]  # uniform is the default
    else:
        plans = [ipot(cost, 0.5, steps, a, b) for steps in (30, 2000)]
    for plan in plans:  # the column step comes last: columns exact after every step
        torch.testing.assert_close(plan.sum(dim=-2), b.expand(4, 9), rtol=0, atol=1e-12)
    # rows converge: measured L1 errors ≤ 1e-4 after 2000 steps on these problems (0.05 after 30)
    assert float((plans[1].sum(dim=-1) - a).abs().sum(dim=-1).max()) < 2e-4
    assert (plans[1] >= 0).all()


def test_ipot_equals_the_multiplicative_algorithm_and_solves_a_batch_one_by_one():
    cost, a, b = batched_problems(5, 7, seeds=range(3))
    batched = ipot(cost, 0.3, 40, a, b)
    for i in range(3):  # the log-domain updates are the paper's updates: equal to rounding
        torch.testing.assert_close(
            batched[i], multiplicative_ipot(cost[i], 0.3, 40, a[i], b[i]), rtol=1e-10, atol=1e-15
        )
        torch.testing.assert_close(batched[i], ipot(cost[i], 0.3, 40, a[i], b[i]), rtol=1e-12, atol=1e-15)


def test_ipot_stays_finite_where_the_multiplicative_form_underflows():
    """exp(−C/β) and the plan ∝ exp(−k·C/β) underflow float32 for small β: 0/0 in the paper's form."""
    cost, a, b = transport_problem(6, 6, seed=4)
    cost = (2 * cost / cost.max()).float()  # a cosine-like range [0, 2]
    assert torch.isnan(multiplicative_ipot(cost, 0.01, 30, a.float(), b.float())).any()
    plan = ipot(cost, 0.01, 30, a, b)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(dim=0), b.float())


def test_ipot_keeps_float64_and_lifts_half_precision_with_autocast_off():
    cost, a, b = transport_problem(4, 5, seed=1)
    assert ipot(cost, 0.5, 10, a, b).dtype == F64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = ipot(cost.bfloat16(), 0.5, 10, a, b)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, ipot(cost.bfloat16().float(), 0.5, 10, a.float(), b.float()))


def test_wasserstein_gradient_through_the_unrolled_iterations_matches_finite_differences():
    cost, a, b = transport_problem(3, 4, seed=2)
    cost.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: (c * ipot(c, 0.5, 10, a, b)).sum(), (cost,))


def point_cloud_costs(n: int, seed: int, shift: int = 0) -> torch.Tensor:
    """Euclidean distances of random 2-D points, scaled to a maximum of 1."""
    points = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + shift), dtype=F64)
    distances = torch.cdist(points, points)
    return distances / distances.max()


def pot_gromov(cost_s: torch.Tensor, cost_t: torch.Tensor) -> float:
    p, q = ot.unif(len(cost_s)), ot.unif(len(cost_t))
    value = ot.gromov.gromov_wasserstein2(cost_s.numpy(), cost_t.numpy(), p, q, loss_fun="square_loss")
    return float(cast(float, value))  # a float without log=True


@pytest.mark.parametrize("n, seed", [(5, 0), (6, 1), (8, 3)])
def test_gromov_wasserstein_of_a_relabelled_space_is_zero_and_finds_the_relabelling(n, seed):
    cost_s = point_cloud_costs(n, seed)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))
    cost_t = cost_s[permutation][:, permutation]  # the same points in another order: an isometry
    assert pot_gromov(cost_s, cost_t) < 1e-12
    distance, plan = gromov_wasserstein(cost_s, cost_t)  # MADELEINE's 5 × 20 steps, β = 0.1
    assert (plan.argmax(dim=1) == permutation.argsort()).all()
    # a slightly blurred permutation: measured ≤ 2.1e-3 on 15 such problems, where unrelated clouds
    # give 0.03–0.13; converged (10 × 300 steps) it is the exact permutation, measured ≤ 2e-4
    assert 0 <= float(distance) < 5e-3
    assert float(gromov_wasserstein(cost_s, cost_t, outer=10, inner=300)[0]) < 1e-3


@pytest.mark.parametrize("n, m, seed", [(5, 6, 1), (6, 5, 2), (6, 8, 4)])
def test_gromov_wasserstein_equals_pot_where_both_reach_the_same_local_optimum(n, m, seed):
    """GW is not convex and both solvers are local (POT: conditional gradient with exact LPs and a line
    search; here: full steps to near-exact IPOT plans), both from a bᵀ; on these problems both settle on
    the same plan. On others each lands lower about half the time (a different basin, not a bias)."""
    cost_s, cost_t = point_cloud_costs(n, seed), point_cloud_costs(m, seed, shift=50)
    distance, plan = gromov_wasserstein(cost_s, cost_t, outer=10, inner=300)
    # measured ≤ 5.1e-7 relative: what remains is IPOT's last inexact rows (≤ 1e-6 in L1)
    assert float(distance) == pytest.approx(pot_gromov(cost_s, cost_t), rel=1e-5)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((n,), 1 / n, dtype=F64), rtol=0, atol=1e-5)
    # the distance is POT's objective of our plan (same square-loss decomposition), to rounding
    constant, h_s, h_t = ot.gromov.init_matrix(cost_s.numpy(), cost_t.numpy(), ot.unif(n), ot.unif(m))
    assert float(distance) == pytest.approx(float(ot.gromov.gwloss(constant, h_s, h_t, plan.numpy())), rel=1e-12)


def test_gromov_wasserstein_gradient_reaches_the_costs_with_the_plan_held():
    cost_s = point_cloud_costs(5, 0).requires_grad_(True)
    cost_t = point_cloud_costs(6, 0, shift=50).requires_grad_(True)
    distance, plan = gromov_wasserstein(cost_s, cost_t, outer=10, inner=300)
    assert not plan.requires_grad
    distance.backward()
    # with the plan held, the distance is the quadruple sum Σ (Cs_ik − Ct_jl)² γ_ij γ_kl (its marginals are
    # exact to ~1e-7 here), whose gradient autograd computes independently of the decomposition
    held = plan.detach()
    s, t = cost_s.detach().requires_grad_(True), cost_t.detach().requires_grad_(True)
    quadruple = ((s[:, None, :, None] - t[None, :, None, :]).square() * held[:, :, None, None] * held).sum()
    quadruple.backward()
    assert s.grad is not None and t.grad is not None
    torch.testing.assert_close(cost_s.grad, s.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(cost_t.grad, t.grad, rtol=0, atol=1e-6)


def tokens(cases: int, n: int, seed: int, d: int = 16) -> torch.Tensor:
    return torch.randn(cases, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_got_of_identical_token_sets_is_zero_in_both_terms():
    x = tokens(3, 10, seed=0)
    assert 0 <= float(graph_optimal_transport(x, x, gw_weight=0)) < 1e-8  # WD: measured ~1e-10
    # GWD: a slightly blurred identity; measured 4e-9 in float64, 1e-5 in float32 (the decomposition
    # cancels O(1) terms), against ~0.05 for noise of scale 0.3
    assert 0 <= float(graph_optimal_transport(x, x)) < 1e-7
    assert 0 <= float(graph_optimal_transport(x.float(), x.float())) < 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_got_grows_with_the_perturbation(seed):
    x = tokens(2, 10, seed)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=F64)
    losses = [float(graph_optimal_transport(x, x + scale * noise)) for scale in (0.0, 0.1, 0.3, 1.0)]
    assert losses == sorted(losses) and len(set(losses)) == 4, losses


def test_got_ignores_the_order_of_the_tokens_and_sums_or_averages_the_cases():
    x, y = tokens(3, 9, seed=1), tokens(3, 11, seed=2)
    loss = graph_optimal_transport(x, y)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(graph_optimal_transport(x, y[:, order]), loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(graph_optimal_transport(x, y, reduction="sum"), 3 * loss, rtol=1e-12, atol=0)


def test_threshold_over_case_keeps_a_case_independent_of_its_batch():
    x = tokens(2, 8, seed=4)
    y = torch.stack([x[0] + 0.3 * tokens(1, 8, seed=5)[0], -x[1]])  # case 1 spans a wider cost range

    def alone_and_in_batch(over: Literal["case", "batch"]) -> tuple[torch.Tensor, torch.Tensor]:
        """Case 0's loss by itself, and its share of the batch's summed loss."""
        alone = graph_optimal_transport(x[:1], y[:1], threshold_over=over)
        batch = graph_optimal_transport(x, y, reduction="sum", threshold_over=over)
        return alone, batch - graph_optimal_transport(x[1:], y[1:], threshold_over=over)

    torch.testing.assert_close(*alone_and_in_batch("case"), rtol=1e-9, atol=0)
    alone, in_batch = alone_and_in_batch("batch")
    assert not torch.allclose(alone, in_batch, rtol=1e-2, atol=0)  # the reference's min/max over the batch


def test_got_gradients_are_finite_and_the_wasserstein_term_matches_finite_differences():
    x, y = tokens(2, 6, seed=6).float().requires_grad_(True), tokens(2, 7, seed=7).float().requires_grad_(True)
    graph_optimal_transport(x, y).backward()
    assert x.grad is not None and y.grad is not None
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all() and x.grad.abs().sum() > 0
    x64, y64 = tokens(2, 3, seed=8, d=5).requires_grad_(True), tokens(2, 4, seed=9, d=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, v: graph_optimal_transport(u, v, gw_weight=0), (x64, y64))


def test_got_runs_in_float32_under_autocast():
    x, y = tokens(2, 6, seed=10).float(), tokens(2, 5, seed=11).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = graph_optimal_transport(x.bfloat16(), y.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, graph_optimal_transport(x.bfloat16().float(), y.bfloat16().float()))


def test_sample_tokens_draws_token_positions_per_case():
    cases, n, count = 3, 300, 256
    positions = torch.arange(n, dtype=torch.float32).expand(cases, n)
    labelled = torch.stack([torch.arange(cases, dtype=torch.float32)[:, None].expand(cases, n), positions], -1)
    labelled.requires_grad_(True)  # token (b, i) is the vector [b, i]
    sample = sample_tokens(labelled, count, torch.Generator().manual_seed(0))
    assert sample.shape == (cases, count, 2)
    chosen = sample[..., 1].long()
    assert (sample[..., 0] == torch.arange(cases)[:, None]).all()  # every row is one of its own case's tokens
    assert all(len(row.unique()) == count for row in chosen)  # without replacement
    assert len({tuple(row.tolist()) for row in chosen}) == cases  # each case draws its own positions
    assert (chosen >= cases).float().mean() > 0.9  # the reference's randperm(B) could only reach < B
    sample.sum().backward()
    assert labelled.grad is not None
    assert (labelled.grad.sum(dim=(1, 2)) == 2 * count).all() and set(labelled.grad.unique().tolist()) == {0, 1}
    again = sample_tokens(labelled, count, torch.Generator().manual_seed(0))
    assert torch.equal(again, sample)


def test_sample_tokens_keeps_every_token_of_a_short_set():
    x = tokens(2, 5, seed=12)
    assert torch.equal(sample_tokens(x, 5), x) and torch.equal(sample_tokens(x, 256), x)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="beta"):
        ipot(torch.rand(3, 4), beta=0)
    with pytest.raises(ValueError, match="n, n"):
        gromov_wasserstein(torch.rand(3, 4), torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"\[B, n, d\]"):
        graph_optimal_transport(torch.rand(2, 3, 4), torch.rand(3, 3, 4))
    with pytest.raises(ValueError, match="reduction"):
        graph_optimal_transport(torch.rand(2, 3, 4), torch.rand(2, 3, 4), reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        sample_tokens(torch.rand(2, 3, 4), 0)
