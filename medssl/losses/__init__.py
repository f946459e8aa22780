"""Self-supervised losses, one file per family; each works unchanged on one device and under DDP."""

from medssl.losses.clustering import sinkhorn_knopp, spherical_kmeans, swapped_prediction
from medssl.losses.contrastive import info_nce, supervised_contrastive
from medssl.losses.distillation import DINOLoss
from medssl.losses.redundancy import barlow_twins

__all__ = ["DINOLoss", "barlow_twins", "info_nce", "sinkhorn_knopp", "spherical_kmeans", "supervised_contrastive", "swapped_prediction"]
