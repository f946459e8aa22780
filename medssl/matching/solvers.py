"""Graph-matching solvers for LVM-Med: linear assignment and second-order (Lawler QAP) matching.

A matching of two graphs of ``n`` nodes is a permutation matrix ``v [n, n]`` (``v[i, a] = 1`` pairs
source node ``i`` with target node ``a``). Every solver here MAXIMISES the affinity

    f(v) = Σ_ia Cv[i, a] v_ia  +  Σ_{s=(i,j) ∈ Es, t=(a,b) ∈ Et} Ce[s, t] v_ia v_jb

over permutations. Graphs come as directed edge lists ``[B, m, 2]`` (or ``[m, 2]`` shared by the
batch); an index of ``-1`` marks a padding edge, so graphs with different edge counts share a tensor.

The second-order solver is IPFP (Leordeanu, Hebert & Sukthankar, NeurIPS 2009): repeatedly solve the
linear assignment of the objective's gradient, line-search towards it, and keep the best discrete
solution seen. Started from the unary linear assignment it is never worse than the linear-only
matching, and each step costs a few batched gathers plus one Hungarian solve per graph, so it runs
on sparse kNN edge lists without the dense ``[n², n²]`` affinity matrix that general QAP solvers want.
IPFP runs from several starts (the linear assignment, the barycentre, and linear assignments of
perturbed unaries), and pairwise-exchange local search polishes each; under LVM-Med's Gumbel noise a
single IPFP run stops several per cent below the best matching multi-start search finds.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "EdgePairs",
    "PermutationObjective",
    "brute_force_matching",
    "edge_indicator",
    "edges_from_adjacency",
    "graph_matching",
    "knn_edges",
    "linear_assignment",
    "linear_matching",
    "matching_objective",
    "swap_local_search",
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


def _padded_ends(edges: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tail and head node of every edge, ``[B, m]`` each, with padding edges (``-1``) sent to the extra
    slot ``n``: the matching is padded with a zero row and column there, so they drop out of every sum."""
    valid = (edges >= 0).all(dim=-1)
    return torch.where(valid, edges[..., 0], n), torch.where(valid, edges[..., 1], n)


class EdgePairs:
    """The source and target graphs' edge ends, indexed once per solve: the sums over edge pairs become
    gathers and scatters, ``tails(v)[s, t] = v[tail s, tail t]`` and so on (``m_s·m_t`` work per graph,
    not the ``m_s·m_t·n`` of multiplying by incidence matrices)."""

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
        src_tail, src_head = _padded_ends(self.source_edges, n)
        tgt_tail, tgt_head = _padded_ends(self.target_edges, n)
        stride = n + 1  # flat index of (i, a) in the padded [n + 1, n + 1] matching
        self.tail_index = (src_tail.unsqueeze(2) * stride + tgt_tail.unsqueeze(1)).reshape(batch, -1)
        self.head_index = (src_head.unsqueeze(2) * stride + tgt_head.unsqueeze(1)).reshape(batch, -1)

    def select(self, rows: torch.Tensor) -> EdgePairs:
        """The edge pairs of a subset of the batch (the starts still moving)."""
        part = copy.copy(self)
        part.source_edges, part.target_edges = self.source_edges[rows], self.target_edges[rows]
        part.tail_index, part.head_index = self.tail_index[rows], self.head_index[rows]
        return part

    def _padded(self, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(v, (0, 1, 0, 1)).flatten(1)

    def _gather(self, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._padded(v).gather(1, index).view(v.shape[0], *self.source_edges.shape[1:2], -1)

    def tails(self, v: torch.Tensor) -> torch.Tensor:
        """``v[i, a]`` for every edge pair ``((i, j), (a, b))``: ``[B, m_s, m_t]``."""
        return self._gather(v, self.tail_index)

    def heads(self, v: torch.Tensor) -> torch.Tensor:
        """``v[j, b]`` for every edge pair ``((i, j), (a, b))``: ``[B, m_s, m_t]``."""
        return self._gather(v, self.head_index)

    def quadratic(self, x: torch.Tensor, edge_affinity: torch.Tensor) -> torch.Tensor:
        """The second-order term ``Σ Ce[s, t] x_ia x_jb`` of each graph, ``[B]`` (a bilinear form, so it
        also gives the line-search curvature when ``x`` is a direction)."""
        return (edge_affinity * self.tails(x) * self.heads(x)).sum(dim=(1, 2))

    def quadratic_gradient(self, x: torch.Tensor, edge_affinity: torch.Tensor) -> torch.Tensor:
        """∂/∂x of :meth:`quadratic`: each edge pair feeds ``Ce·x_jb`` to ``(i, a)`` and ``Ce·x_ia`` to ``(j, b)``."""
        batch, n = x.shape[0], self.n
        out = x.new_zeros(batch, (n + 1) ** 2)
        out.scatter_add_(1, self.tail_index, (edge_affinity * self.heads(x)).flatten(1))
        out.scatter_add_(1, self.head_index, (edge_affinity * self.tails(x)).flatten(1))
        return out.view(batch, n + 1, n + 1)[:, :n, :n]


def pair_table(pairs: EdgePairs, edge_affinity: torch.Tensor) -> torch.Tensor:
    """``Ce`` re-indexed by the target edge's end nodes: ``table[s, a·n + b] = Σ_{t=(a,b)} Ce[s, t]``
    (last slot collects padding), ``[B, m_s, n² + 1]``, so a swap's pairwise gain is four look-ups."""
    n = pairs.n
    valid = (pairs.target_edges >= 0).all(dim=-1)
    slot = torch.where(valid, pairs.target_edges[..., 0] * n + pairs.target_edges[..., 1], n * n)
    table = edge_affinity.new_zeros(*edge_affinity.shape[:2], n * n + 1)
    return table.scatter_add_(2, slot.unsqueeze(1).expand_as(edge_affinity), edge_affinity)


class PermutationObjective:
    """``f``, ``∇f`` and the gain of every pairwise exchange at permutations ``perm [R, n]`` (``perm[i] = a``),
    by look-ups in :func:`pair_table`: ``m_s`` look-ups for the score and ``m_s·n`` for the gradient per
    permutation, against the ``m_s·m_t`` of the dense forms, so local search can afford many starts.

    ``graph [R]`` says which of the ``G`` problems (``unary [G, n, n]``, ``edge_affinity [G, m_s, m_t]``,
    ``pairs`` of ``G`` graphs) each row is a start of; the table is built once per problem, not per start
    (at n = 64 it is ``m_s·n²`` ≈ 1.3M entries). By default one row per problem."""

    def __init__(
        self, unary: torch.Tensor, edge_affinity: torch.Tensor, pairs: EdgePairs, graph: torch.Tensor | None = None
    ):
        self.n, self.m = pairs.n, pairs.source_edges.shape[1]
        self.unary = unary
        self.table = pair_table(pairs, edge_affinity).flatten()  # [(G·m_s·(n² + 1))]
        self.source_edges = pairs.source_edges
        tail, head = pairs.source_edges[..., 0], pairs.source_edges[..., 1]
        self.valid = ((tail >= 0) & (head >= 0)).to(unary.dtype)
        self.tail, self.head = tail.clamp_min(0), head.clamp_min(0)
        self.graph = torch.arange(len(unary), device=unary.device) if graph is None else graph

    def select(self, rows: torch.Tensor) -> PermutationObjective:
        """The objective of a subset of the rows (the starts still searching)."""
        part = copy.copy(self)
        part.graph = self.graph[rows]
        return part

    def _look(self, slot: torch.Tensor) -> torch.Tensor:
        """``table[s, slot[r, s, ...]]`` of each row's problem, for ``slot [R, m_s, ...]``."""
        edge = self.graph.view(-1, 1) * self.m + torch.arange(self.m, device=slot.device)  # [R, m_s]
        edge = edge.view(*edge.shape, *([1] * (slot.dim() - 2)))
        return self.table.take(edge * (self.n * self.n + 1) + slot)

    def score(self, perm: torch.Tensor) -> torch.Tensor:
        g = self.graph
        unary = self.unary[g].gather(2, perm.unsqueeze(2)).sum(dim=(1, 2))
        slot = perm.gather(1, self.tail[g]) * self.n + perm.gather(1, self.head[g])
        return unary + (self._look(slot) * self.valid[g]).sum(dim=1)

    def gradient(self, perm: torch.Tensor) -> torch.Tensor:
        """``∇f`` at the permutation:
        ``c[i, a] + Σ_{s=(i,j)} table[s, a·n + perm j] + Σ_{s=(j,i)} table[s, perm j·n + a]``."""
        g, n = self.graph, self.n
        tail, head, valid = self.tail[g], self.head[g], self.valid[g].unsqueeze(2)
        a = torch.arange(n, device=perm.device)
        to_tail = self._look(a * n + perm.gather(1, head).unsqueeze(2)) * valid
        to_head = self._look(perm.gather(1, tail).unsqueeze(2) * n + a) * valid
        out = self.unary[g].clone()
        out.scatter_add_(1, tail.unsqueeze(2).expand(-1, -1, n), to_tail)
        return out.scatter_add_(1, head.unsqueeze(2).expand(-1, -1, n), to_head)

    def swap_gains(self, perm: torch.Tensor) -> torch.Tensor:
        """Exact change of ``f`` for exchanging the targets of every pair of source nodes, ``[R, n, n]``
        (``-inf`` on the diagonal).

        For a swap ``d = v' − v`` the change is ``∇f(v)·d + q(d)``; ``q(d)`` only involves source edges
        joining the two swapped nodes, so it is gathered per source edge rather than from an ``n⁴`` table.
        (A self-loop source edge would also contribute; :func:`swap_local_search` re-scores every move.)
        """
        rows, n = perm.shape
        g = self.graph
        moved = self.gradient(perm).gather(2, perm.unsqueeze(1).expand(rows, n, n))  # moved[i, j] = ∇f[i, perm j]
        kept = moved.diagonal(dim1=1, dim2=2)
        linear = moved + moved.transpose(1, 2) - kept.unsqueeze(2) - kept.unsqueeze(1)
        tail, head = self.tail[g], self.head[g]
        usable = self.valid[g] * (tail != head)
        p, p2 = perm.gather(1, tail), perm.gather(1, head)
        pairwise = (
            self._look(p2 * n + p) - self._look(p2 * n + p2) - self._look(p * n + p) + self._look(p * n + p2)
        ) * usable
        per_edge = moved.new_zeros(rows, n * n).scatter_add_(1, tail * n + head, pairwise).view(rows, n, n)
        gains = linear + per_edge + per_edge.transpose(1, 2)
        return gains.diagonal_scatter(torch.full_like(kept, float("-inf")), dim1=1, dim2=2)


def swap_local_search(
    perm: torch.Tensor, objective: PermutationObjective, max_swaps: int = 200, tolerance: float = 1e-6
) -> torch.Tensor:
    """Pairwise-exchange (2-opt) local search, the classic QAP neighbourhood, on permutations ``[R, n]``:
    apply each row's best improving swap until none improves (or ``max_swaps``). Every move is
    re-scored, so ``f`` never decreases; rows that stop leave the batch, so many starts stay cheap."""
    total, n = perm.shape
    perm = perm.clone()
    active = torch.arange(total, device=perm.device)
    part, current = objective, objective.score(perm)
    for _ in range(max_swaps):
        sub = perm[active]
        best_gain, flat = part.swap_gains(sub).reshape(len(active), -1).max(dim=1)
        rows = torch.arange(len(active), device=perm.device)
        i, j = flat // n, flat % n
        swapped = sub.clone()
        swapped[rows, i], swapped[rows, j] = sub[rows, j], sub[rows, i]
        candidate_score = part.score(swapped)
        accept = (best_gain > tolerance) & (candidate_score > current[active] + 0.5 * tolerance)
        if not accept.any():
            break
        perm[active[accept]] = swapped[accept]
        current[active[accept]] = candidate_score[accept]
        active, part = active[accept], part.select(accept.nonzero().squeeze(1))
    return perm


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
    restarts: int = 8,
    restart_noise: float = 1.0,
    max_iterations: int = 50,
    uniform_start: bool = True,
    local_search: bool = True,
    max_swaps: int = 200,
    patience: int = 5,
    tolerance: float = 1e-6,
    seed: int = 0,
) -> torch.Tensor:
    """Second-order matching: IPFP, then multi-start pairwise-exchange search; returns 0/1 permutation
    matrices shaped like ``unary``.

    IPFP runs from two starts side by side: the unary linear assignment, so the result scores at least as
    high as :func:`linear_matching`, and (``uniform_start``) the barycentre ``1/n``, which lets the pairwise
    term steer the first step. Each iteration: ``b = LAP(∇f(x))``, the exact maximiser of ``f`` on the
    segment ``x → b`` (``f`` is quadratic along it), and ``b`` is kept if it beats the best discrete matching
    so far. Stops when no start moves, when no graph's best matching improved for ``patience`` iterations,
    or after ``max_iterations``.

    Then (``local_search``) pairwise-exchange search polishes IPFP's matchings and ``restarts`` more starts
    per graph: the linear assignments of the unary affinity plus ``restart_noise × std(unary) ×`` Gumbel
    noise, drawn from a generator seeded with ``seed``, so the solver is a deterministic function of its
    input (I-MLE's backward solve sees the same starts). The best matching found wins. Under the noise
    LVM-Med trains with (n = 16, Gumbel(0, 1) on both affinities) IPFP alone stops a mean 4.6 % below the
    best matching known; 8 restarts leave 1.9 %, 16 leave 0.6 %, for about 5× and 10× the time
    (``benchmarks/bench_matching.py``). ``restarts=0`` is the solver before issue 15.
    """
    unary_b, edge_b, single = _as_batch(unary, edge_affinity)
    edges = _check_edges(edge_b, source_edges, target_edges)
    if edges is None:
        return linear_assignment(unary)
    edge_b, source_edges, target_edges = edges
    dtype = torch.float64 if unary_b.dtype == torch.float64 else torch.float32
    batch, n = unary_b.shape[:2]
    unary_b = unary_b.detach().to(dtype)
    lap = linear_assignment(unary_b)
    points = [lap] + ([torch.full_like(lap, 1.0 / n)] if uniform_start else [])
    if restarts > 0:
        generator = torch.Generator().manual_seed(seed)
        base = unary_b.cpu()
        spread = base.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None]
        uniform = torch.rand((restarts, batch, n, n), generator=generator, dtype=torch.float64)
        noise = -(-uniform.clamp_min(1e-300).log()).log().to(dtype)  # Gumbel(0, 1)
        perturbed = (base + restart_noise * spread * noise).reshape(restarts * batch, n, n)
        points.append(linear_assignment(perturbed).to(lap.device))
    x = torch.cat(points)  # [starts·B, n, n], start-major
    starts = len(x) // batch
    c = unary_b.repeat(starts, 1, 1)
    ce = edge_b.detach().to(dtype).repeat(starts, 1, 1)
    pairs = EdgePairs(
        _batched_edges(source_edges, batch).repeat(starts, 1, 1),
        _batched_edges(target_edges, batch).repeat(starts, 1, 1),
        batch * starts,
        n,
        dtype,
        c.device,
    )
    objective = PermutationObjective(
        unary_b,
        edge_b.detach().to(dtype),
        EdgePairs(source_edges, target_edges, batch, n, dtype, c.device),
        graph=torch.arange(batch, device=c.device).repeat(starts),
    )
    lap_perm = lap.argmax(dim=-1).repeat(starts, 1)
    at_vertex = (x.amax(dim=-1) == 1).all(dim=-1)  # a start that is a permutation is its own first best
    perms = torch.where(at_vertex[:, None], x.argmax(dim=-1), lap_perm)
    best_score = objective.score(perms)
    # each start iterates until it stops moving or its best has not improved for `patience` steps, and then
    # leaves the batch (a continuous start can creep towards a vertex for long without changing it)
    active = torch.arange(len(x), device=x.device)
    stale = torch.zeros(len(x), dtype=torch.long, device=x.device)
    part_c, part_ce, part_pairs = c, ce, pairs
    for _ in range(max_iterations):
        gradient = part_c + part_pairs.quadratic_gradient(x, part_ce)
        target = linear_assignment(gradient)
        target_perm = target.argmax(dim=-1)
        target_score = objective.select(active).score(target_perm)
        improved = target_score > best_score[active]
        perms[active[improved]] = target_perm[improved]
        best_score[active[improved]] = target_score[improved]
        stale = torch.where(improved, 0, stale + 1)
        direction = target - x
        slope = (gradient * direction).sum(dim=(1, 2))  # ≥ 0: target maximises the linearisation
        curvature = part_pairs.quadratic(direction, part_ce)
        step = torch.where(
            curvature < 0, (-slope / (2 * curvature.clamp(max=-1e-12))).clamp(0.0, 1.0), torch.ones_like(slope)
        )
        x = x + step[:, None, None] * direction
        keep = (stale < patience) & (direction.abs().amax(dim=(1, 2)) > tolerance)
        if not keep.any():
            break
        if not keep.all():
            rows = keep.nonzero().squeeze(1)
            active, stale, x = active[rows], stale[rows], x[rows]
            part_c, part_ce, part_pairs = part_c[rows], part_ce[rows], part_pairs.select(rows)
    if local_search:
        perms = swap_local_search(perms, objective, max_swaps, tolerance)
        best_score = objective.score(perms)
    winner = best_score.reshape(starts, batch).argmax(dim=0)
    chosen = perms.reshape(starts, batch, n)[winner, torch.arange(batch, device=winner.device)]
    result = torch.nn.functional.one_hot(chosen, n).to(unary.dtype)
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
