"""Label-free and labelled evaluation of embeddings: RankMe, kNN, linear probes, metrics."""

from medssl.eval.knn import knn_predict
from medssl.eval.rankme import rankme

__all__ = ["knn_predict", "rankme"]
