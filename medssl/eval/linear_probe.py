"""Linear probe: L2-regularised multinomial logistic regression on frozen embeddings, the standard
companion of kNN in SSL evaluation, fitted to the optimum with L-BFGS (no learning-rate to tune)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float = 1e-3,
    iterations: int = 100,
    dtype: torch.dtype = torch.float64,
    standardize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights ``[C, D]``, bias ``[C]`` and the standardisation (mean, std) minimising mean cross-entropy
    + ``l2/2 · ||W||²`` on standardised features (``standardize=False``: raw features, mean 0 and std 1
    returned). ``dtype`` float64 reaches the optimum to ~1e-8 (what tests compare with); float32 halves
    memory and time on large sets. The loss is summed in float64 either way: in float32 its last digits
    stall, the line search sees no progress and L-BFGS stops early (~1e-3 from the optimum's probabilities
    on some CPUs instead of ~3e-5)."""
    with torch.inference_mode(False), torch.enable_grad():  # monitors run inside Lightning's inference mode
        x = features.detach().to(dtype)
        x = x.clone() if x.is_inference() else x
        labels = labels.detach().clone().long()
        if standardize:
            mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
        else:
            mean, std = torch.zeros_like(x[0]), torch.ones_like(x[0])
        x = (x - mean) / std
        weight = torch.zeros(num_classes, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
        tight = dtype == torch.float64
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            max_iter=iterations,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9 if tight else 1e-6,
            tolerance_change=1e-12 if tight else 1e-9,
        )

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            logits = (x @ weight.T + bias).double()  # [N, C]: small beside x, so float64 costs nothing
            loss = F.cross_entropy(logits, labels) + 0.5 * l2 * weight.double().pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(objective)
    return weight.detach(), bias.detach(), mean, std


def linear_probe_logits(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Class logits ``[N, C]`` of a probe from :func:`fit_linear_probe` (standardised as in training)."""
    return ((features.to(weight.dtype) - mean) / std) @ weight.T + bias


def linear_probe_accuracy(
    features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, folds: int = 2, seed: int = 0
) -> float | None:
    """Cross-validated accuracy of a linear probe over labelled samples (labels ≥ 0), folds drawn at
    random by sample; None without two classes in every training fold."""
    keep = labels >= 0
    features, labels = features[keep], labels[keep].long()
    if len(labels) < 2 * folds or labels.unique().numel() < 2:
        return None
    num_classes = int(labels.max()) + 1
    fold = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)) % folds
    correct = 0
    for k in range(folds):
        train, test = fold != k, fold == k
        if labels[train].unique().numel() < 2:
            return None
        probe = fit_linear_probe(features[train], labels[train], num_classes, l2)
        correct += int((linear_probe_logits(features[test], *probe).argmax(1) == labels[test]).sum())
    return correct / len(labels)
