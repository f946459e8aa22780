"""Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018, as DINO evaluates)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``[Q, C]`` of ``queries``: each of the ``k`` most cosine-similar training embeddings
    votes for its class with weight ``exp(similarity / temperature)``. Chunked over queries so the
    similarity matrix stays small."""
    train = F.normalize(train.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=1)
        similarity, index = (q @ train.T).topk(k, dim=1)
        weights = torch.exp(similarity / temperature)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[index].long(), weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)
