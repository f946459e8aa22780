"""Optimal transport: entropic Sinkhorn (Cuturi 2013) in the log domain, one solver for SwAV's equipartition
(:func:`medssl.losses.clustering.sinkhorn_knopp`) and the transport losses built on it; and MADELEINE's
Graph Optimal Transport loss (Chen et al., ICML 2020): a Wasserstein term solved by IPOT (Xie et al., UAI
2019) plus a Gromov-Wasserstein term whose inner solver is IPOT too, between two sets of tokens."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from medssl.losses.precision import full_precision

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    epsilon: float = 0.05,
    iterations: int = 100,
    tolerance: float | None = None,
    reduce_sum: Reduce = _local,
    reduce_max: Reduce = _local,
) -> torch.Tensor:
    """Plan ``P [..., n, m]`` minimising ``<P, cost> − ε·H(P)`` with row sums ``a [..., n]`` and column
    sums ``b [..., m]`` (uniform by default; equal total mass). ``cost`` is ``[..., n, m]``; pass
    ``-scores`` to transport along similarities.

    ``P = exp((f_i + g_j − cost_ij) / ε)``; each iteration fits ``g`` to the columns, then ``f`` to the
    rows (SwAV's and POT's order), so rows are exact and columns converge. Only the potentials are kept,
    each fitted by a max-shifted logsumexp, so a small ε neither overflows nor underflows a kernel
    ``exp(−cost / ε)``. After ``iterations``, or earlier once the columns' L1 error is below ``tolerance``
    (one host sync per iteration). Gradients flow through the unrolled iterations.

    Rows may be split across ranks (one global batch): pass this rank's rows of ``cost`` and ``a``, and
    ``reduce_sum`` / ``reduce_max`` that sum / max a tensor over ranks
    (:func:`medssl.nn.distributed.all_reduce_sum` / ``all_reduce_max``, which carry no gradient); every
    sum over rows then covers the global problem. Transpose a cost whose columns are split."""
    if iterations < 1 or epsilon <= 0:
        raise ValueError(f"need iterations ≥ 1 and epsilon > 0, got {iterations} and {epsilon}")
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., n, m], got shape {tuple(cost.shape)}")
    if (reduce_sum is _local) != (reduce_max is _local):
        raise ValueError("split rows need both reduce_sum and reduce_max (a shift common to all ranks)")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_kernel = -cost.to(dtype) / epsilon
        n, m = log_kernel.shape[-2:]
        if a is None:
            a = 1 / reduce_sum(torch.tensor(float(n), dtype=dtype, device=cost.device))
        if b is None:
            b = torch.tensor(1 / m, dtype=dtype, device=cost.device)
        log_a = torch.log(a.to(dtype)).expand(log_kernel.shape[:-1])
        log_b = torch.log(b.to(dtype)).expand(*log_kernel.shape[:-2], m)
        f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
        for step in range(iterations):
            columns = _logsumexp_rows(log_kernel + f.unsqueeze(-1), reduce_sum, reduce_max)
            if tolerance is not None and step > 0:  # columns + g: the log column sums of the current plan
                if float(((columns + g).exp() - log_b.exp()).abs().sum(-1).max()) < tolerance:
                    break
            g = log_b - columns
            f = log_a - torch.logsumexp(log_kernel + g.unsqueeze(-2), dim=-1)
        return torch.exp(log_kernel + f.unsqueeze(-1) + g.unsqueeze(-2))


def _logsumexp_rows(x: torch.Tensor, reduce_sum: Reduce, reduce_max: Reduce) -> torch.Tensor:
    """``logsumexp`` over dim -2 when its rows may lie on several ranks: one shift per column, common to all."""
    peak = reduce_max(x.detach().amax(dim=-2, keepdim=True))
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # an all −inf column stays −inf
    return (peak + torch.log(reduce_sum(torch.exp(x - peak).sum(dim=-2, keepdim=True)))).squeeze(-2)


def ipot(
    cost: torch.Tensor,
    beta: float = 0.5,
    iterations: int = 30,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plan ``T [..., n, m]`` of the *unregularised* transport of ``cost [..., n, m]`` by the inexact proximal
    point method IPOT (Xie et al. 2019), one Sinkhorn step per proximal step; row sums ``a [..., n]``,
    column sums ``b [..., m]`` (positive, equal total mass; uniform by default), batched over leading dims::

        A = exp(−C/β);  T = 1;  σ = 1;  repeat: Q = A ⊙ T;  δ = a / (Q σ);  σ = b / (Qᵀ δ);  T = diag(δ) Q diag(σ)

    Each step is an entropic transport with the previous plan as prior, so after k steps ``T`` is close
    to the entropic plan of ε ≈ β/k and tends to the exact plan as k grows, for any β; columns are exact
    after every step, rows converge.

    Range: the multiplicative form divides 0 by 0 once a whole row of ``exp(−C/β)`` underflows (float32:
    every cost of the row above ~87β, e.g. β = 0.01 on cosine costs in [0, 2]), and its plan entries,
    ``∝ exp(−k·C/β)`` after k steps, leave the normal range well before that. So the same updates run on
    ``log T``, ``log δ``, ``log σ``, each product with a vector a max-shifted logsumexp: no kernel entry or
    denominator can become 0, for any β. Only the returned plan is exponentiated; an entry below the
    dtype's smallest number then becomes 0, which it is to working precision. Where the multiplicative
    form stays in range the two agree to rounding. float64 stays float64, anything else runs in float32
    with autocast off.

    Gradients flow through the unrolled iterations (the loss ``⟨C, T⟩`` is differentiated through the
    plan as well as the cost), so memory grows with ``iterations``; wrap the call in ``torch.no_grad()``
    where only the plan is wanted."""
    if iterations < 1 or beta <= 0:
        raise ValueError(f"need iterations ≥ 1 and beta > 0, got {iterations} and {beta}")
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., n, m], got shape {tuple(cost.shape)}")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_kernel = -cost.to(dtype) / beta
        log_a, log_b = _log_marginals(log_kernel, a, b)
        log_plan = torch.zeros_like(log_kernel)
        log_sigma = torch.zeros_like(log_b)
        for _ in range(iterations):
            log_q = log_kernel + log_plan
            log_delta = log_a - torch.logsumexp(log_q + log_sigma.unsqueeze(-2), dim=-1)
            log_sigma = log_b - torch.logsumexp(log_q + log_delta.unsqueeze(-1), dim=-2)
            log_plan = log_delta.unsqueeze(-1) + log_q + log_sigma.unsqueeze(-2)
        return log_plan.exp()


def _log_marginals(
    log_kernel: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log a [..., n]`` and ``log b [..., m]`` in the kernel's dtype, uniform where not given."""
    n, m = log_kernel.shape[-2:]

    def log(marginal: torch.Tensor | None, size: int) -> torch.Tensor:
        if marginal is None:
            return torch.full((size,), -math.log(size), dtype=log_kernel.dtype, device=log_kernel.device)
        return marginal.to(log_kernel).log()

    log_a, log_b = log(a, n), log(b, m)
    batch = log_kernel.shape[:-2]
    return log_a.expand(*batch, n), log_b.expand(*batch, m)


def gromov_wasserstein(
    cost_s: torch.Tensor,
    cost_t: torch.Tensor,
    beta: float = 0.1,
    outer: int = 5,
    inner: int = 20,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square-loss Gromov-Wasserstein distance ``[...]`` and plan ``γ [..., n, m]`` between the intra-domain
    costs ``cost_s [..., n, n]`` and ``cost_t [..., m, m]`` with marginals ``a``/``b`` (uniform by default)::

        GW(γ) = Σ_ijkl (Cs_ik − Ct_jl)² γ_ij γ_kl = ⟨L(γ), γ⟩,   L(γ) = Cs² a 1ᵀ + 1 bᵀ (Ct²)ᵀ − 2 Cs γ Ctᵀ

    (Peyré et al. 2016's decomposition, the one POT uses). From ``γ = a bᵀ``, ``outer`` times: linearise
    at γ and move to the transport of the linearisation, ``γ ← ipot(L(γ), beta, inner)`` (GOT's Algorithm
    2; a local method, as GW is not convex).

    The distance is ``⟨L(γ), γ⟩`` at the returned plan, with the plan held constant: the gradient reaches
    the costs, not the solver. At a stationary plan this *is* the gradient of the minimum (envelope
    theorem: the constraints do not depend on the costs), and the solver runs under ``no_grad``, so the
    ``outer × inner`` unrolled steps cost no memory. MADELEINE's code (as the project's reference notes
    summarise it) detaches the last plan too but pairs it with the linearisation at the plan before,
    which is not detached, so its gradient still runs back through the earlier solver steps; the two
    values agree once the iterations settle. This evaluates the objective of the plan it returns, as
    POT's ``gromov_wasserstein2`` does. GOT's paper (Algorithm 2) was not at hand to check
    whether it differentiates through the GW plan: the choice here rests on MADELEINE's code and the
    envelope argument."""
    if outer < 1:
        raise ValueError(f"need outer ≥ 1, got {outer}")
    if cost_s.dim() < 2 or cost_s.shape[-1] != cost_s.shape[-2] or cost_t.shape[-1] != cost_t.shape[-2]:
        raise ValueError(f"costs must be [..., n, n] and [..., m, m], got {tuple(cost_s.shape)}, {tuple(cost_t.shape)}")
    dtype = torch.float64 if torch.float64 in (cost_s.dtype, cost_t.dtype) else torch.float32
    with torch.autocast(device_type=cost_s.device.type, enabled=False):
        cost_s, cost_t = cost_s.to(dtype), cost_t.to(dtype)
        n, m = cost_s.shape[-1], cost_t.shape[-1]
        p = torch.full((n,), 1 / n, dtype=dtype, device=cost_s.device) if a is None else a.to(cost_s)
        q = torch.full((m,), 1 / m, dtype=dtype, device=cost_s.device) if b is None else b.to(cost_s)

        def linearisation(cs: torch.Tensor, ct: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
            constant = (cs.square() @ p.unsqueeze(-1)) + (ct.square() @ q.unsqueeze(-1)).transpose(-1, -2)
            return constant - 2 * cs @ plan @ ct.transpose(-1, -2)

        with torch.no_grad():
            cs, ct = cost_s.detach(), cost_t.detach()
            batch = torch.broadcast_shapes(cs.shape[:-2], ct.shape[:-2], p.shape[:-1], q.shape[:-1])
            plan = (p.unsqueeze(-1) * q.unsqueeze(-2)).expand(*batch, n, m)
            for _ in range(outer):
                plan = ipot(linearisation(cs, ct, plan), beta, inner, p, q)
        distance = (linearisation(cost_s, cost_t, plan) * plan).sum(dim=(-2, -1))
        return distance, plan


def thresholded_cosine_cost(x: torch.Tensor, y: torch.Tensor, threshold: float, over: str = "case") -> torch.Tensor:
    """GOT's sparsified cost ``[B, n, m]``: ``C = 1 − cos(x_i, y_j)``, less ``min C + threshold·(max C − min C)``,
    clipped at 0, so the closest pairs (the lowest ``threshold`` fraction of the cost range) cost nothing.
    Min and max are taken per case (``over="case"``) or over the whole batch (``"batch"``)."""
    cost = 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)
    dims = (-2, -1) if over == "case" else tuple(range(cost.dim()))
    low, high = cost.amin(dim=dims, keepdim=True), cost.amax(dim=dims, keepdim=True)
    return torch.relu(cost - (low + threshold * (high - low)))


@full_precision
def graph_optimal_transport(
    x: torch.Tensor,
    y: torch.Tensor,
    threshold: float = 0.1,
    w_beta: float = 0.5,
    w_iterations: int = 30,
    gw_beta: float = 0.1,
    gw_outer: int = 5,
    gw_inner: int = 20,
    gw_weight: float = 1.0,
    reduction: Literal["mean", "sum"] = "mean",
    threshold_over: Literal["case", "batch"] = "case",
) -> torch.Tensor:
    """MADELEINE's local alignment loss: Graph Optimal Transport (Chen et al. 2020) between the token sets
    ``x [B, n, d]`` and ``y [B, m, d]`` of each case (e.g. its H&E and IHC slides), ``WD + gw_weight·GWD``.

    Nodes: ``WD = ⟨C', T⟩`` with ``C'`` the thresholded cosine cost between x and y
    (:func:`thresholded_cosine_cost`) and ``T = ipot(C', w_beta, w_iterations)``, differentiated through the
    unrolled solver. Edges: ``GWD`` (:func:`gromov_wasserstein`) between the same thresholded cosine costs
    of x with itself and of y with itself. Uniform marginals.

    ``reduction="mean"`` averages over cases (medssl's default, so the scale does not depend on the batch
    size); ``"sum"`` sums them, as MADELEINE's code does. ``threshold_over="case"`` (default) takes each
    threshold's min/max from the case's own cost, so a case's loss does not depend on the other cases in
    its batch (and one DDP process equals one big batch); ``"batch"`` takes them over the whole batch, as
    the reference does. Runs in float32 (float64 stays) with autocast off."""
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"need x [B, n, d] and y [B, m, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    if reduction not in ("mean", "sum") or threshold_over not in ("case", "batch"):
        raise ValueError(f"reduction must be mean|sum and threshold_over case|batch, got {reduction}, {threshold_over}")
    cost = thresholded_cosine_cost(x, y, threshold, threshold_over)
    wasserstein = (cost * ipot(cost, w_beta, w_iterations)).sum(dim=(-2, -1))
    if gw_weight == 0:  # the Gromov-Wasserstein solver is the costly part: skip it when unweighted
        return wasserstein.mean() if reduction == "mean" else wasserstein.sum()
    gromov, _ = gromov_wasserstein(
        thresholded_cosine_cost(x, x, threshold, threshold_over),
        thresholded_cosine_cost(y, y, threshold, threshold_over),
        gw_beta,
        gw_outer,
        gw_inner,
    )
    per_case = wasserstein + gw_weight * gromov
    return per_case.mean() if reduction == "mean" else per_case.sum()


def sample_tokens(tokens: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random subset of ``count`` token positions of each case, drawn independently per case and without
    replacement along the token axis: ``[B, n, d] → [B, min(count, n), d]`` (positions in their original
    order; all tokens when ``n ≤ count``). Gradients flow to the chosen tokens. (MADELEINE's code draws
    ``randperm(B)[:256]`` and indexes tokens with it, so it keeps only the first B positions.)"""
    if tokens.dim() != 3 or count < 1:
        raise ValueError(f"need tokens [B, n, d] and count ≥ 1, got {tuple(tokens.shape)} and {count}")
    cases, n = tokens.shape[:2]
    if n <= count:
        return tokens
    device = tokens.device if generator is None else generator.device
    keys = torch.rand(cases, n, generator=generator, device=device)
    positions = keys.argsort(dim=1)[:, :count].sort(dim=1).values.to(tokens.device)
    return tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
