"""Label-free and labelled evaluation of embeddings: RankMe, kNN, linear probes, metrics."""

from medssl.eval.knn import knn_predict
from medssl.eval.linear_probe import fit_linear_probe, linear_probe_accuracy
from medssl.eval.rankme import rankme

__all__ = ["fit_linear_probe", "knn_predict", "linear_probe_accuracy", "rankme"]
