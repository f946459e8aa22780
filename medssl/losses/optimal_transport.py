"""Entropic optimal transport (Cuturi 2013) by Sinkhorn iterations in the log domain: one solver for SwAV's
equipartition (:func:`medssl.losses.clustering.sinkhorn_knopp`) and the transport losses built on it."""

from __future__ import annotations

from collections.abc import Callable

import torch

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
