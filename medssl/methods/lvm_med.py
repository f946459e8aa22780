"""LVM-Med (Nguyen et al., NeurIPS 2023): self-supervised learning by second-order graph matching.

Two augmented views of a batch; the batch is cut into graphs of ``graph_size`` images. In each view an
image is a node: its projection ``Z`` is joined to its ``k`` nearest neighbours and refined by a 2-layer
GCN. The two graphs are matched; the right matching pairs each image's view ``s`` with its own view
``t`` (the identity), and the loss is the Hamming distance of the solved matching to it. Affinities:

- vertex ``c_v = α·c_glo + (1-α)·(c_lo(i,a) + c_lo(a,i))``: cosine of the GCN outputs, plus a local
  cost between feature maps at corresponding locations (crop geometry) and at most-similar cells;
- edge ``c_e[(i,j),(a,b)] = cos(ẑ_i - ẑ_j, ẑ_a - ẑ_b)`` over the kNN edges of the two graphs.

The matching is perturb-and-MAP: Gumbel noise on the affinities, a quadratic-assignment solve, and
gradients by implicit maximum-likelihood estimation (I-MLE, λ = 80) through the solver. Switches
reproduce the paper's ablations: ``second_order``, ``message_passing``, ``gumbel_noise``, ``local_cost``.
"""

from __future__ import annotations

from functools import partial

import torch

from medssl.geometry import cell_centres
from medssl.losses.graph_matching import edge_affinity, global_affinity, hamming, local_affinity
from medssl.matching import edges_from_adjacency, graph_matching, imle_matching, linear_matching
from medssl.methods.base import SSLMethod
from medssl.nn.graph import GCN, knn_adjacency
from medssl.nn.heads import ProjectionHead


class LVMMed(SSLMethod):
    """Defaults are the paper's: graphs of 16 nodes, k = 5, a 128-d projector (one linear layer, 2048 × 128
    on a ResNet-50), a 2-layer GCN of width 128, α = 0.8, I-MLE λ = 80, Gumbel(0, 1) noise (``noise_scale``
    1), Adam at 2e-3. ``local_top`` is the fraction of cells the local cost keeps (the paper's γ, which it
    does not give). ``gcn_residual`` (default on, a departure from the paper's formula) keeps each node's
    own features through message passing: without it two layers over 16-node kNN graphs smooth the nodes
    together and the matching stops learning (measured: no progress even on one fixed batch).

    ``noise_scale`` is the noise temperature: both affinities get ``noise_scale × Gumbel(0, 1)`` before the
    solve (``imle_matching``'s ``noise_temperature``; the paper uses 1). The affinities are cosines in
    [-1, 1], so at 1 the noise dominates them: on planted 16-node problems whose true pairs have cosine 0.64
    (the others 0), the perturbed solve matches 21 % of nodes to themselves at 1, 78 % at 0.3 and 98 % at 0.1
    (``benchmarks/bench_matching.py``). That is why ``train/matched`` stays at 5–20 % in training; it is the
    perturb-and-MAP distribution's width, not a failure to learn.

    ``solver_restarts`` is the number of extra starts of the second-order solver
    (:func:`medssl.matching.graph_matching`). Under Gumbel(0, 1) noise at n = 16 one IPFP run stops a mean
    4.6 % below the best matching known; 8 restarts cut that to 1.9 % (16: 0.6 %) for 5× (10×) the solve
    time (``benchmarks/bench_matching.py``); see ``benchmarks/bench_lvm_med.py`` for its share of a step.

    ``edge_gradient`` scales the gradient the Hamming loss sends to the encoder through the edge
    affinities: 1 is the paper's I-MLE (both affinities differentiated), 0 (the default, a departure from
    the paper) makes the edges a stop-gradient prior that still shapes every solve, values in between
    scale the edge path (``scale_gradient``). At initialisation the edge path's encoder gradient is 7–8×
    the vertex path's (cosine 0.6–0.8, seeds 0–2, the toy model below; ``--gradient-ratio``). Measured with
    ``pipelines/lvm_med_experiment.py`` on real-pixel tiles at toy scale (ResNet-18 at width 0.25, 32 px,
    25 epochs of 6 steps, the model from ``configs/pretrain/lvm_med_tiles.yaml``), stain-shifted kNN
    after pretraining minus at init, mean ± std over seeds 0–4: ``edge_gradient`` 0: +0.041 ± 0.020 (5/5
    seeds up); 1: −0.016 ± 0.049; 0.05: −0.011 ± 0.061. The first-order ablation (``second_order``,
    ``message_passing``, ``local_cost`` off) does better than all of them: +0.072 ± 0.039
    (docs/methods/lvm-med.md)."""

    def __init__(
        self,
        backbone: dict | None = None,
        proj_dim: int = 128,
        proj_layers: int = 1,
        proj_hidden_dim: int = 2048,
        graph_size: int = 16,
        knn: int = 5,
        gcn_layers: int = 2,
        alpha: float = 0.8,
        imle_lambda: float = 80.0,
        local_top: float = 0.5,
        noise_scale: float = 1.0,
        solver_restarts: int = 8,
        gcn_residual: bool = True,
        edge_gradient: bool | float = 0.0,
        second_order: bool = True,
        message_passing: bool = True,
        gumbel_noise: bool = True,
        local_cost: bool = True,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        **base,
    ):
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, **base)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.encoder.out_dim, proj_hidden_dim, proj_dim, layers=proj_layers)
        self.gcn = GCN(proj_dim, proj_dim, gcn_layers, residual=gcn_residual) if message_passing else None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        (pooled_s, maps_s), (pooled_t, maps_t) = (
            self.encoder.forward_features(self.scale(v)) for v in batch["views"][:2]
        )
        graphs = len(pooled_s) // h.graph_size
        if graphs == 0:
            raise ValueError(
                f"a batch of {len(pooled_s)} cannot form a graph of {h.graph_size} nodes; "
                "raise the batch size or lower graph_size"
            )
        keep = graphs * h.graph_size

        def nodes(x: torch.Tensor) -> torch.Tensor:  # [B, ...] → [graphs, graph_size, ...]
            return x[:keep].reshape(graphs, h.graph_size, *x.shape[1:])

        zs, zt = nodes(self.projector(pooled_s)), nodes(self.projector(pooled_t))
        adjacency_s, adjacency_t = knn_adjacency(zs.detach(), h.knn), knn_adjacency(zt.detach(), h.knn)
        if self.gcn is not None:
            zs, zt = self.gcn(zs, adjacency_s), self.gcn(zt, adjacency_t)
        unary = global_affinity(zs, zt)
        if h.local_cost:
            grid = tuple(maps_s.shape[2:])
            cells_s, cells_t = (nodes(m.flatten(2).transpose(1, 2)) for m in (maps_s, maps_t))
            centres_s, centres_t = (nodes(cell_centres(g[:keep], grid)) for g in batch["geometry"][:2])
            local = local_affinity(cells_s, cells_t, centres_s, centres_t, h.local_top)
            local = local + local_affinity(cells_t, cells_s, centres_t, centres_s, h.local_top).transpose(1, 2)
            unary = h.alpha * unary + (1 - h.alpha) * local
        if h.second_order:
            edges_s, edges_t = edges_from_adjacency(adjacency_s), edges_from_adjacency(adjacency_t)
            edges = edge_affinity(zs, zt, edges_s, edges_t)
            matching, _ = imle_matching(
                unary,
                scale_gradient(edges, float(h.edge_gradient)),
                edges_s,
                edges_t,
                solver=partial(graph_matching, restarts=h.solver_restarts),
                lam=h.imle_lambda,
                noise=h.gumbel_noise,
                noise_temperature=h.noise_scale,
            )
        else:
            matching, _ = imle_matching(
                unary, solver=linear_matching, lam=h.imle_lambda, noise=h.gumbel_noise, noise_temperature=h.noise_scale
            )
        loss = hamming(matching)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/matched", 1 - loss.detach() / (2 * h.graph_size))  # fraction of images matched to themselves
        return loss


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient times ``scale`` in the backward (0: a stop-gradient)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())
