"""DeepCluster-v2 (Caron et al. 2020, the SwAV paper's appendix): pseudo-labels from spherical k-means on a
memory bank of last epoch's embeddings, with the centroids as frozen prototypes for this epoch.

:class:`ClusterMemory` keeps, per view, the latest embedding of every sample of the dataset (by dataset
index). At the start of an epoch :meth:`ClusterMemory.synchronise` merges the ranks' banks (each row
from the rank that wrote it last), so every rank holds the same bank; :meth:`ClusterMemory.cluster`
then runs the same seeded k-means on every rank, one head per entry of ``clusters`` (head ``h`` clusters
view ``h mod views``, as the banks alternate between heads). That equals one process clustering the
whole dataset, which is what DDP must reproduce."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medssl.losses.clustering import spherical_kmeans
from medssl.losses.precision import full_precision
from medssl.nn.distributed import all_reduce_max, all_reduce_sum, rank, world_size


class ClusterMemory(nn.Module):
    """Memory bank ``[views, size, dim]`` of unit embeddings by dataset index, k-means pseudo-labels
    ``assignments [heads, size]`` (-1: not yet clustered) and frozen prototypes (one ``[K_h, dim]``
    buffer per head: buffers, so no optimiser moves them and checkpoints keep them)."""

    bank: torch.Tensor
    stamp: torch.Tensor
    step: torch.Tensor
    assignments: torch.Tensor

    def __init__(
        self, size: int, dim: int, clusters: Sequence[int] = (3000, 3000, 3000), views: int = 2, iterations: int = 10
    ):
        super().__init__()
        if size < max(clusters):
            raise ValueError(f"k-means with {max(clusters)} clusters needs at least as many samples, got {size}")
        self.clusters, self.views, self.iterations = list(clusters), views, iterations
        self.register_buffer("bank", torch.zeros(views, size, dim))
        self.register_buffer("stamp", torch.zeros(size, dtype=torch.long))  # 0: never written
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("assignments", torch.full((len(clusters), size), -1, dtype=torch.long))
        for h, k in enumerate(clusters):
            self.register_buffer(f"prototypes_{h}", torch.zeros(k, dim))

    @property
    def filled(self) -> torch.Tensor:
        return self.stamp > 0

    def prototypes(self, head: int) -> torch.Tensor:
        return self.get_buffer(f"prototypes_{head}")

    @torch.no_grad()
    def store(self, index: torch.Tensor, embeddings: Sequence[torch.Tensor]) -> None:
        """Remember this rank's batch: one ``[B, dim]`` embedding per view for the samples ``index``."""
        self.step += 1
        for v, z in enumerate(embeddings):
            self.bank[v, index] = F.normalize(z.detach().float(), dim=1)
        self.stamp[index] = self.step

    @torch.no_grad()
    def synchronise(self) -> None:
        """Every rank ends with the newest embedding of every sample (a collective; a no-op alone).
        Ranks step together, so stamps compare across ranks; of equal newest stamps the lowest rank wins."""
        if world_size() == 1:
            return
        newest = all_reduce_max(self.stamp)
        mine = self.stamp == newest
        writer = torch.where(mine, torch.full_like(self.stamp, world_size() - rank()), torch.zeros_like(self.stamp))
        owner = world_size() - all_reduce_max(writer)  # the lowest rank holding the newest copy
        keep = (owner == rank()) & mine
        self.bank.copy_(all_reduce_sum(self.bank * keep[None, :, None]))
        self.stamp.copy_(newest)

    @torch.no_grad()
    def cluster(self, seed: int = 0) -> None:
        """k-means of every head on the filled rows; the centroids become the heads' prototypes."""
        rows = self.filled.nonzero().squeeze(1)
        for h, k in enumerate(self.clusters):
            if len(rows) < k:
                raise ValueError(f"head {h}: {len(rows)} samples in the memory bank, fewer than its {k} clusters")
            centroids, labels = spherical_kmeans(self.bank[h % self.views, rows], k, self.iterations, seed=seed + h)
            self.prototypes(h).copy_(centroids)
            self.assignments[h].fill_(-1)
            self.assignments[h, rows] = labels

    def scores(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Cosine scores ``[B, K_h]`` of embeddings against each head's prototypes."""
        z = F.normalize(z, dim=1)
        return [z @ self.prototypes(h).to(z.dtype).T for h in range(len(self.clusters))]

    def loss(self, index: torch.Tensor, embeddings: Sequence[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
        """DeepCluster-v2's loss for a batch: every view of a sample predicts the sample's pseudo-label in
        every head, averaged over heads and views."""
        terms = [
            deepcluster_cross_entropy(self.scores(z)[h], self.assignments[h, index], temperature)
            for h in range(len(self.clusters))
            for z in embeddings
        ]
        return torch.stack(terms).mean()


@full_precision
def deepcluster_cross_entropy(scores: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``CE(scores / τ, targets)`` over the samples with a pseudo-label (targets ≥ 0). A batch with none
    (the bank was not clustered yet) gives a zero that keeps the graph."""
    labelled = targets >= 0
    if not bool(labelled.any()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores[labelled] / temperature, targets[labelled])
