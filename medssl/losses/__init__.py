"""Self-supervised losses, one file per family; each works unchanged on one device and under DDP."""

from medssl.losses.clustering import sinkhorn_knopp, spherical_kmeans, swapped_prediction
from medssl.losses.contrastive import info_nce, supervised_contrastive, symmetric_info_nce
from medssl.losses.distillation import DINOLoss
from medssl.losses.graph_matching import edge_affinity, global_affinity, hamming, local_affinity
from medssl.losses.optimal_transport import (
    graph_optimal_transport,
    gromov_wasserstein,
    ipot,
    sample_tokens,
    sinkhorn,
)
from medssl.losses.redundancy import barlow_twins

__all__ = [
    "DINOLoss",
    "barlow_twins",
    "edge_affinity",
    "global_affinity",
    "graph_optimal_transport",
    "gromov_wasserstein",
    "hamming",
    "info_nce",
    "ipot",
    "local_affinity",
    "sample_tokens",
    "sinkhorn",
    "sinkhorn_knopp",
    "spherical_kmeans",
    "supervised_contrastive",
    "swapped_prediction",
    "symmetric_info_nce",
]
