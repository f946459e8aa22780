"""Combinatorial graph matching for LVM-Med: linear and second-order solvers, and I-MLE to train through them."""

from medssl.matching.imle import GraphMatchingIMLE, gumbel_noise, imle_matching
from medssl.matching.solvers import (
    brute_force_matching,
    edge_indicator,
    edges_from_adjacency,
    graph_matching,
    knn_edges,
    linear_assignment,
    linear_matching,
    matching_objective,
)

__all__ = [
    "GraphMatchingIMLE",
    "brute_force_matching",
    "edge_indicator",
    "edges_from_adjacency",
    "graph_matching",
    "gumbel_noise",
    "imle_matching",
    "knn_edges",
    "linear_assignment",
    "linear_matching",
    "matching_objective",
]
