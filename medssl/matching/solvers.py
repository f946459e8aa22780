"""Graph-matching solvers for LVM-Med: linear assignment and second-order (Lawler QAP) matching.

A matching of two graphs of ``n`` nodes is a permutation matrix ``v [n, n]`` (``v[i, a] = 1`` pairs
source node ``i`` with target node ``a``). Every solver here MAXIMISES the affinity

    f(v) = Σ_ia Cv[i, a] v_ia  +  Σ_{s=(i,j) ∈ Es, t=(a,b) ∈ Et} Ce[s, t] v_ia v_jb

over permutations. Graphs come as directed edge lists ``[B, m, 2]`` (or ``[m, 2]`` shared by the
batch); an index of ``-1`` marks a padding edge, so graphs with different edge counts share a tensor.

The second-order solver is IPFP (Leordeanu, Hebert & Sukthankar, NeurIPS 2009): repeatedly solve the
linear assignment of the objective's gradient, line-search towards it, and keep the best discrete
solution seen. Started from the unary linear assignment it is never worse than the linear-only
matching, and each step costs a few batched matmuls plus one Hungarian solve per graph, so it runs
on sparse kNN edge lists without the dense ``[n², n²]`` affinity matrix that general QAP solvers want.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "brute_force_matching",
    "edge_indicator",
    "edges_from_adjacency",
    "graph_matching",
    "knn_edges",
    "linear_assignment",
    "linear_matching",
    "matching_objective",
]


@torch.no_grad()
def linear_assignment(scores: torch.Tensor) -> torch.Tensor:
    """0/1 permutation matrix maximising ``Σ scores ⊙ v`` (Hungarian, scipy), for ``[n, n]`` or ``[B, n, n]``.

    Runs on the CPU in float64 whatever the input's device; the result has the input's device and dtype.
    """
    batch = scores.detach().reshape(-1, *scores.shape[-2:]).to("cpu", torch.float64).numpy()
    if not np.isfinite(batch).all():
        raise ValueError("linear_assignment: scores contain NaN or inf")
    out = np.zeros_like(batch)
    for k, matrix in enumerate(batch):
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        out[k, rows, cols] = 1.0
    return torch.from_numpy(out).reshape(scores.shape).to(scores.device, scores.dtype)


def _batched_edges(edges: torch.Tensor, batch: int) -> torch.Tensor:
    """``[m, 2]`` edge lists shared by all graphs become ``[B, m, 2]``."""
    if edges.dim() == 2:
        edges = edges.unsqueeze(0)
    if edges.dim() != 3 or edges.shape[-1] != 2:
        raise ValueError(f"edges must be [m, 2] or [B, m, 2], got {tuple(edges.shape)}")
    return edges.expand(batch, -1, -1)


def _incidence(edges: torch.Tensor, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot tail and head of every edge, ``[B, m, n]`` each; padding edges (``-1``) are all-zero rows,
    so they drop out of every product below."""
    valid = (edges >= 0).all(dim=-1, keepdim=True).to(dtype)
    onehot = torch.nn.functional.one_hot(edges.clamp_min(0).long(), n).to(dtype)  # [B, m, 2, n]
    return onehot[:, :, 0] * valid, onehot[:, :, 1] * valid


class EdgePairs:
    """Incidence of the source and target graphs, built once per solve: turns the sums over edge pairs
    into batched matmuls, ``(S v Tᵀ)[s, t] = v[tail s, tail t]`` and so on."""

    def __init__(
        self,
        source_edges: torch.Tensor,
        target_edges: torch.Tensor,
        batch: int,
        n: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.n = n
        self.source_edges = _batched_edges(source_edges.to(device), batch).long()
        self.target_edges = _batched_edges(target_edges.to(device), batch).long()
        self.src_tail, self.src_head = _incidence(self.source_edges, n, dtype)
        self.tgt_tail, self.tgt_head = _incidence(self.target_edges, n, dtype)

    def tails(self, v: torch.Tensor) -> torch.Tensor:
        """``v[i, a]`` for every edge pair ``((i, j), (a, b))``: ``[B, m_s, m_t]``."""
        return self.src_tail @ v @ self.tgt_tail.transpose(1, 2)

    def heads(self, v: torch.Tensor) -> torch.Tensor:
        """``v[j, b]`` for every edge pair ``((i, j), (a, b))``: ``[B, m_s, m_t]``."""
        return self.src_head @ v @ self.tgt_head.transpose(1, 2)

    def quadratic(self, x: torch.Tensor, edge_affinity: torch.Tensor) -> torch.Tensor:
        """The second-order term ``Σ Ce[s, t] x_ia x_jb`` of each graph, ``[B]`` (a bilinear form, so it
        also gives the line-search curvature when ``x`` is a direction)."""
        return (edge_affinity * self.tails(x) * self.heads(x)).sum(dim=(1, 2))

    def quadratic_gradient(self, x: torch.Tensor, edge_affinity: torch.Tensor) -> torch.Tensor:
        """∂/∂x of :meth:`quadratic`: each edge pair feeds ``Ce·x_jb`` to ``(i, a)`` and ``Ce·x_ia`` to ``(j, b)``."""
        to_tails = self.src_tail.transpose(1, 2) @ (edge_affinity * self.heads(x)) @ self.tgt_tail
        to_heads = self.src_head.transpose(1, 2) @ (edge_affinity * self.tails(x)) @ self.tgt_head
        return to_tails + to_heads


def pair_table(pairs: EdgePairs, edge_affinity: torch.Tensor) -> torch.Tensor:
    """``Ce`` re-indexed by the target edge's end nodes: ``table[s, a·n + b] = Σ_{t=(a,b)} Ce[s, t]``
    (last slot collects padding), ``[B, m_s, n² + 1]``, so a swap's pairwise gain is four look-ups."""
    n = pairs.n
    valid = (pairs.target_edges >= 0).all(dim=-1)
    slot = torch.where(valid, pairs.target_edges[..., 0] * n + pairs.target_edges[..., 1], n * n)
    table = edge_affinity.new_zeros(*edge_affinity.shape[:2], n * n + 1)
    return table.scatter_add_(2, slot.unsqueeze(1).expand_as(edge_affinity), edge_affinity)


def swap_gains(v: torch.Tensor, gradient: torch.Tensor, table: torch.Tensor, pairs: EdgePairs) -> torch.Tensor:
    """Exact change of ``f`` for exchanging the targets of every pair of source nodes, ``[B, n, n]``.

    For a swap ``d = v' − v`` the change is ``∇f(v)·d + q(d)``; ``q(d)`` only involves source edges
    joining the two swapped nodes, so it is gathered per source edge rather than from an ``n⁴`` table.
    (A self-loop source edge would also contribute; :func:`_swap_local_search` re-scores every move.)
    """
    batch, n = v.shape[:2]
    perm = v.argmax(dim=-1)
    moved = gradient.gather(2, perm.unsqueeze(1).expand(batch, n, n))  # moved[i, j] = ∇f[i, perm j]
    kept = moved.diagonal(dim1=1, dim2=2)
    linear = moved + moved.transpose(1, 2) - kept.unsqueeze(2) - kept.unsqueeze(1)
    tail, head = pairs.source_edges[..., 0], pairs.source_edges[..., 1]
    usable = (tail >= 0) & (head >= 0) & (tail != head)
    tail, head = tail.clamp_min(0), head.clamp_min(0)
    p, p2 = perm.gather(1, tail), perm.gather(1, head)

    def look(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return table.gather(2, (a * n + b).unsqueeze(-1)).squeeze(-1)

    pairwise = (look(p2, p) - look(p2, p2) - look(p, p) + look(p, p2)) * usable
    per_edge = v.new_zeros(batch, n * n).scatter_add_(1, tail * n + head, pairwise).view(batch, n, n)
    gains = linear + per_edge + per_edge.transpose(1, 2)
    return gains.diagonal_scatter(torch.full_like(kept, float("-inf")), dim1=1, dim2=2)


def _swap_local_search(
    v: torch.Tensor, score_of, gradient_of, table: torch.Tensor, pairs: EdgePairs, max_swaps: int, tolerance: float
) -> torch.Tensor:
    """Pairwise-exchange (2-opt) local search, the classic QAP neighbourhood: apply each graph's best
    improving swap until none improves. IPFP stops at a fixed point of its linearisation; this escapes
    some of those, and every move is re-scored so ``f`` never decreases."""
    batch, n = v.shape[:2]
    rows = torch.arange(batch, device=v.device)
    current = score_of(v)
    for _ in range(max_swaps):
        gains = swap_gains(v, gradient_of(v), table, pairs).reshape(batch, -1)
        best_gain, flat = gains.max(dim=1)
        if not (best_gain > tolerance).any():
            break
        i, j = flat // n, flat % n
        perm = v.argmax(dim=-1)
        swapped = perm.clone()
        swapped[rows, i], swapped[rows, j] = perm[rows, j], perm[rows, i]
        candidate = torch.nn.functional.one_hot(swapped, n).to(v.dtype)
        candidate_score = score_of(candidate)
        accept = (best_gain > tolerance) & (candidate_score > current)
        if not accept.any():
            break
        v = torch.where(accept[:, None, None], candidate, v)
        current = torch.where(accept, candidate_score, current)
    return v


def _as_batch(
    unary: torch.Tensor, edge_affinity: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Accept one problem (``[n, n]``) or a batch; remember which, so results come back the same way."""
    single = unary.dim() == 2
    if single:
        unary = unary.unsqueeze(0)
        edge_affinity = None if edge_affinity is None else edge_affinity.unsqueeze(0)
    if unary.dim() != 3 or unary.shape[1] != unary.shape[2]:
        raise ValueError(f"unary affinity must be [n, n] or [B, n, n], got {tuple(unary.shape)}")
    return unary, edge_affinity, single


def _check_edges(
    edge_affinity: torch.Tensor | None, source_edges: torch.Tensor | None, target_edges: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The second-order term ``(Ce, Es, Et)``, or ``None`` without one; edges and their affinity come
    together or not at all."""
    if edge_affinity is not None and source_edges is not None and target_edges is not None:
        return edge_affinity, source_edges, target_edges
    if edge_affinity is not None or source_edges is not None or target_edges is not None:
        raise ValueError("edge_affinity, source_edges and target_edges must be given together")
    return None


@torch.no_grad()
def edge_indicator(v: torch.Tensor, source_edges: torch.Tensor, target_edges: torch.Tensor) -> torch.Tensor:
    """``v_ia · v_jb`` for every edge pair ``((i, j) ∈ Es, (a, b) ∈ Et)``, ``[B, m_s, m_t]``: the
    "solution" whose dot product with ``Ce`` is the second-order score (I-MLE differentiates through it)."""
    batched, _, single = _as_batch(v, None)
    pairs = EdgePairs(source_edges, target_edges, batched.shape[0], batched.shape[1], batched.dtype, batched.device)
    out = pairs.tails(batched) * pairs.heads(batched)
    return out[0] if single else out


@torch.no_grad()
def matching_objective(
    v: torch.Tensor,
    unary: torch.Tensor,
    edge_affinity: torch.Tensor | None = None,
    source_edges: torch.Tensor | None = None,
    target_edges: torch.Tensor | None = None,
) -> torch.Tensor:
    """The maximised affinity ``f(v)`` of each graph: ``[B]`` (a scalar for one ``[n, n]`` problem)."""
    v_b, _, single = _as_batch(v, None)
    unary_b, edge_b, _ = _as_batch(unary, edge_affinity)
    score = (unary_b * v_b).sum(dim=(1, 2))
    edges = _check_edges(edge_b, source_edges, target_edges)
    if edges is not None:
        edge_b, source_edges, target_edges = edges
        pairs = EdgePairs(source_edges, target_edges, v_b.shape[0], v_b.shape[1], v_b.dtype, v_b.device)
        score = score + pairs.quadratic(v_b, edge_b.to(v_b.dtype))
    return score[0] if single else score


@torch.no_grad()
def linear_matching(
    unary: torch.Tensor,
    edge_affinity: torch.Tensor | None = None,
    source_edges: torch.Tensor | None = None,
    target_edges: torch.Tensor | None = None,
) -> torch.Tensor:
    """The "w/o second-order" ablation behind the common solver signature: edges are ignored."""
    return linear_assignment(unary)


@torch.no_grad()
def graph_matching(
    unary: torch.Tensor,
    edge_affinity: torch.Tensor | None = None,
    source_edges: torch.Tensor | None = None,
    target_edges: torch.Tensor | None = None,
    max_iterations: int = 50,
    uniform_start: bool = True,
    local_search: bool = True,
    max_swaps: int = 100,
    patience: int = 5,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """Second-order matching by IPFP; returns 0/1 permutation matrices shaped like ``unary``.

    Two starts run side by side (stacked into the batch): the unary linear assignment, so the result scores at
    least as high as :func:`linear_matching`, and (``uniform_start``) the barycentre ``1/n``, which lets the
    pairwise term steer the first step. Each iteration: ``b = LAP(∇f(x))``, the exact maximiser of ``f`` on
    the segment ``x → b`` (``f`` is quadratic along it), and ``b`` is kept if it beats the best discrete
    matching so far. Stops when no start moves, when no graph's best matching improved for ``patience``
    iterations (a continuous start can creep towards a vertex for long without changing it), or after
    ``max_iterations``.
    Then (``local_search``) pairwise-exchange moves polish each start's best matching.
    """
    unary_b, edge_b, single = _as_batch(unary, edge_affinity)
    edges = _check_edges(edge_b, source_edges, target_edges)
    if edges is None:
        return linear_assignment(unary)
    edge_b, source_edges, target_edges = edges
    dtype = torch.float64 if unary_b.dtype == torch.float64 else torch.float32
    batch, n = unary_b.shape[:2]
    starts = 2 if uniform_start else 1
    c = unary_b.detach().to(dtype).repeat(starts, 1, 1)
    ce = edge_b.detach().to(dtype).repeat(starts, 1, 1)
    pairs = EdgePairs(
        _batched_edges(source_edges, batch).repeat(starts, 1, 1),
        _batched_edges(target_edges, batch).repeat(starts, 1, 1),
        batch * starts,
        n,
        dtype,
        c.device,
    )

    def score(x: torch.Tensor) -> torch.Tensor:
        return (c * x).sum(dim=(1, 2)) + pairs.quadratic(x, ce)

    lap = linear_assignment(c[:batch])
    x = torch.cat([lap, torch.full_like(lap, 1.0 / n)]) if uniform_start else lap
    best = lap.repeat(starts, 1, 1)
    best_score = score(best)
    stale = 0
    for _ in range(max_iterations):
        gradient = c + pairs.quadratic_gradient(x, ce)
        target = linear_assignment(gradient)
        target_score = score(target)
        improved = target_score > best_score
        best = torch.where(improved[:, None, None], target, best)
        best_score = torch.where(improved, target_score, best_score)
        stale = 0 if improved.any() else stale + 1
        if stale >= patience:
            break
        direction = target - x
        if direction.abs().amax() <= tolerance:
            break
        slope = (gradient * direction).sum(dim=(1, 2))  # ≥ 0: target maximises the linearisation
        curvature = pairs.quadratic(direction, ce)
        step = torch.where(
            curvature < 0, (-slope / (2 * curvature.clamp(max=-1e-12))).clamp(0.0, 1.0), torch.ones_like(slope)
        )
        x = x + step[:, None, None] * direction
    if local_search:
        best = _swap_local_search(
            best,
            score,
            lambda v: c + pairs.quadratic_gradient(v, ce),
            pair_table(pairs, ce),
            pairs,
            max_swaps,
            tolerance,
        )
        best_score = score(best)
    per_start = best_score.reshape(starts, batch)
    winner = per_start.argmax(dim=0)
    result = best.reshape(starts, batch, n, n)[winner, torch.arange(batch, device=winner.device)]
    result = result.to(unary.dtype)
    return result[0] if single else result


@torch.no_grad()
def brute_force_matching(
    unary: torch.Tensor,
    edge_affinity: torch.Tensor | None = None,
    source_edges: torch.Tensor | None = None,
    target_edges: torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact maximiser by enumerating all ``n!`` permutations (n ≤ 7): the reference for tests."""
    unary_b, edge_b, single = _as_batch(unary, edge_affinity)
    batch, n = unary_b.shape[:2]
    if n > 7:
        raise ValueError(f"brute force is for n ≤ 7, got n = {n}")
    perms = torch.tensor(list(itertools.permutations(range(n))), device=unary_b.device)
    candidates = torch.nn.functional.one_hot(perms, n).to(torch.float64)  # [K, n, n]
    result = []
    for k in range(batch):
        k_edges = None if edge_b is None else edge_b[k].to(torch.float64).expand(len(perms), -1, -1)
        scores = matching_objective(
            candidates,
            unary_b[k].to(torch.float64).expand(len(perms), -1, -1),
            k_edges,
            _edges_of_graph(source_edges, batch, k),
            _edges_of_graph(target_edges, batch, k),
        )
        result.append(candidates[scores.argmax()])
    out = torch.stack(result).to(unary.dtype)
    return out[0] if single else out


def _edges_of_graph(edges: torch.Tensor | None, batch: int, k: int) -> torch.Tensor | None:
    """Graph ``k``'s edge list from shared ``[m, 2]`` or batched ``[B, m, 2]`` edges."""
    return None if edges is None else _batched_edges(edges, batch)[k]


@torch.no_grad()
def knn_edges(points: torch.Tensor, k: int) -> torch.Tensor:
    """Directed kNN graph of each set of points ``[B, n, d]`` (or ``[n, d]``) by cosine similarity:
    edges ``(i, j)`` to the ``k`` nearest other nodes, ``[B, n·k, 2]``; LVM-Med builds its graphs so."""
    batched = points.unsqueeze(0) if points.dim() == 2 else points
    n = batched.shape[1]
    k = min(k, n - 1)
    unit = torch.nn.functional.normalize(batched.float(), dim=-1)
    similarity = (unit @ unit.transpose(1, 2)).diagonal_scatter(
        torch.full(batched.shape[:2], float("-inf"), device=points.device), dim1=1, dim2=2
    )
    neighbours = similarity.topk(k, dim=-1).indices  # [B, n, k]
    tails = torch.arange(n, device=points.device).view(1, n, 1).expand_as(neighbours)
    edges = torch.stack([tails, neighbours], dim=-1).reshape(batched.shape[0], n * k, 2)
    return edges[0] if points.dim() == 2 else edges


@torch.no_grad()
def edges_from_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """Edge lists ``[B, m, 2]`` from adjacency matrices ``[B, n, n]`` (or ``[n, n]`` → ``[m, 2]``), where
    ``m`` is the largest edge count; graphs with fewer edges are padded with ``-1``."""
    batched = adjacency.unsqueeze(0) if adjacency.dim() == 2 else adjacency
    mask = batched != 0
    counts = mask.sum(dim=(1, 2))
    m = int(counts.max()) if len(counts) else 0
    edges = torch.full((batched.shape[0], m, 2), -1, dtype=torch.long, device=adjacency.device)
    for k, graph in enumerate(mask):
        found = graph.nonzero()
        edges[k, : len(found)] = found
    return edges[0] if adjacency.dim() == 2 else edges
