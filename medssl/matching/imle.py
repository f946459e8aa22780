"""Implicit maximum-likelihood estimation (I-MLE, Niepert, Minervini & Franceschi, NeurIPS 2021)
around a graph-matching solver, as LVM-Med back-propagates through its combinatorial matching.

Forward: perturb the affinities with Gumbel(0, 1) noise and return the solver's MAP matching ``v~``
and its edge indicator ``e~[s, t] = v~_ia · v~_jb``. Backward: solve again for the target
distribution's affinities ``θ' = θ − λ ∂L/∂(v~, e~)`` (same noise) and return
``((v~ − v'), (e~ − e')) / λ``. The solvers MAXIMISE affinity, so ``θ'`` raises the affinity of entries
the loss wants switched on, and a gradient-descent step on ``θ`` moves the MAP towards ``v'``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medssl.matching.solvers import edge_indicator, graph_matching

Solver = Callable[..., torch.Tensor]

__all__ = ["GraphMatchingIMLE", "gumbel_noise", "imle_matching"]


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gumbel(0, 1) samples as ``−log E`` with ``E ~ Exp(1)``; an int ``generator`` is a seed, so a run
    can be replayed. Drawn on the generator's device, then moved to ``device``."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    source = generator.device if generator is not None else device
    exponential = torch.empty(shape, device=source, dtype=torch.float64).exponential_(generator=generator)
    return (-exponential.clamp_min(1e-300).log()).to(device=device, dtype=dtype)


class GraphMatchingIMLE(torch.autograd.Function):
    """``(θ_v [B, n, n], θ_e [B, m_s, m_t]) → (v~, e~)``; see the module docstring. Use :func:`imle_matching`."""

    @staticmethod
    def forward(ctx, unary, edge_affinity, source_edges, target_edges, solver, lam, noise_v, noise_e):
        perturbed_v = unary.detach() + noise_v
        perturbed_e = edge_affinity.detach() + noise_e
        v = _solve(solver, perturbed_v, perturbed_e, source_edges, target_edges)
        e = (
            edge_indicator(v, source_edges, target_edges)
            if perturbed_e.numel()
            else perturbed_e.new_zeros(perturbed_e.shape)
        )
        ctx.save_for_backward(perturbed_v, perturbed_e, v, e, source_edges, target_edges)
        ctx.solver, ctx.lam = solver, lam
        return v, e

    @staticmethod
    def backward(ctx, grad_v, grad_e):
        perturbed_v, perturbed_e, v, e, source_edges, target_edges = ctx.saved_tensors
        lam = ctx.lam
        target_v = perturbed_v - lam * grad_v
        target_e = perturbed_e - lam * grad_e
        v_target = _solve(ctx.solver, target_v, target_e, source_edges, target_edges)
        e_target = edge_indicator(v_target, source_edges, target_edges) if target_e.numel() else torch.zeros_like(e)
        return (v - v_target) / lam, (e - e_target) / lam, None, None, None, None, None, None


def _solve(
    solver: Solver,
    unary: torch.Tensor,
    edge_affinity: torch.Tensor,
    source_edges: torch.Tensor,
    target_edges: torch.Tensor,
) -> torch.Tensor:
    """Call the solver with or without the second-order term (an empty ``Ce`` means unary only)."""
    if edge_affinity.numel() == 0:
        return solver(unary)
    return solver(unary, edge_affinity, source_edges, target_edges)


def imle_matching(
    unary: torch.Tensor,
    edge_affinity: torch.Tensor | None = None,
    source_edges: torch.Tensor | None = None,
    target_edges: torch.Tensor | None = None,
    *,
    solver: Solver = graph_matching,
    lam: float = 80.0,
    noise: bool = True,
    noise_temperature: float = 1.0,
    generator: torch.Generator | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Differentiable perturb-and-MAP matching of a batch of graph pairs.

    ``unary [B, n, n]`` and ``edge_affinity [B, m_s, m_t]`` are the affinities (gradients flow to both);
    the edge lists are ``[B, m, 2]`` or ``[m, 2]``. ``noise=False`` is the "w/o Gumbel" ablation;
    ``noise_temperature`` scales the Gumbel samples (the paper uses 1; ``LVMMed``'s ``noise_scale``): with
    cosine affinities in [-1, 1], 1 lets the noise dominate the solve (see ``LVMMed``'s docstring).
    ``solver`` is any function with the signature of :func:`graph_matching`, e.g. :func:`linear_matching`
    for the "w/o second-order" ablation. Returns ``v~ [B, n, n]`` and ``e~ [B, m_s, m_t]`` (``None`` without edges).
    """
    has_edges = edge_affinity is not None
    if edge_affinity is None:
        edge_affinity = unary.new_zeros(unary.shape[0], 0, 0)
        source_edges = target_edges = torch.zeros(0, 2, dtype=torch.long, device=unary.device)
    elif source_edges is None or target_edges is None:
        raise ValueError("edge_affinity needs source_edges and target_edges")
    if noise:
        noise_v = noise_temperature * gumbel_noise(unary.shape, generator, unary.device, unary.dtype)
        generator = generator + 1 if isinstance(generator, int) else generator  # a seed must not repeat ε for ε'
        noise_e = noise_temperature * gumbel_noise(edge_affinity.shape, generator, unary.device, edge_affinity.dtype)
    else:
        noise_v, noise_e = torch.zeros_like(unary), torch.zeros_like(edge_affinity)
    v, e = GraphMatchingIMLE.apply(
        unary,
        edge_affinity,
        source_edges.to(unary.device),
        target_edges.to(unary.device),
        solver,
        float(lam),
        noise_v,
        noise_e,
    )
    return v, (e if has_edges else None)
