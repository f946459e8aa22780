"""Contrastive losses: InfoNCE / NT-Xent (SimCLR, Chen et al. 2020), its decoupled form (DCL, Yeh et
al. 2022), the symmetric cross-modal InfoNCE of paired embeddings (CLIP, Radford et al. 2021; MADELEINE's
slide alignment) and supervised contrastive learning with an arbitrary positive mask (Khosla et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.precision import full_precision
from medssl.nn.distributed import gather, rank


@full_precision
def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    decoupled: bool = False,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """NT-Xent over two views ``z1, z2 [n, d]`` (row ``i`` of each is the same image).

    Every one of the 2N embeddings of the global batch is an anchor; its positive is the other view of
    its image and the other 2N - 2 embeddings are negatives. ``decoupled`` drops the positive from the
    denominator (DCL). Under DDP each rank scores its own anchors against the gathered batch.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    keys = torch.cat([gather(z1), gather(z2)]) if gather_distributed else torch.cat([z1, z2])
    total = keys.shape[0] // 2  # N, the global batch
    offset = rank() * n if gather_distributed else 0
    anchors = torch.cat([z1, z2])
    logits = anchors @ keys.T / temperature
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + total])
    positive_index = torch.cat([local + total, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")
    positive = logits[rows, positive_index]
    if decoupled:
        logits[rows, positive_index] = float("-inf")
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@full_precision
def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``½ CE(A Bᵀ / τ, I) + ½ CE(B Aᵀ / τ, I)`` over L2-normalised rows of ``a, b [n, d]``, row ``i`` of
    each describing the same thing in two modalities (an H&E slide and its IHC slide): each row of one side
    must pick its partner among all rows of the other side. Only cross-modal pairs are compared, unlike
    :func:`info_nce`, whose negatives include the anchor's own modality. The caller gathers rows across
    ranks when it wants the global batch as negatives."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two [n, d] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@full_precision
def supervised_contrastive(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    positive_mask: torch.Tensor,
    temperature: float = 0.1,
    self_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SupCon's L_out with any positives: for anchor ``i``,
    ``-1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{a∉self(i)} exp(s_ia/τ) )``, averaged over anchors that
    have at least one positive.

    ``anchors [n, d]``, ``keys [m, d]`` (e.g. a batch plus a momentum queue), ``positive_mask [n, m]``
    bool; ``self_mask [n, m]`` marks each anchor's own key, excluded from numerator and denominator.
    """
    anchors, keys = F.normalize(anchors, dim=1), F.normalize(keys, dim=1)
    logits = anchors @ keys.T / temperature
    positive_mask = positive_mask.bool()
    if self_mask is not None:
        logits = logits.masked_fill(self_mask.bool(), float("-inf"))
        positive_mask = positive_mask & ~self_mask.bool()
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positive_mask.sum(dim=1)
    has_positive = counts > 0
    if not has_positive.any():
        return logits.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positive_mask, 0.0)).sum(dim=1)[has_positive] / counts[has_positive]
    return per_anchor.mean()
