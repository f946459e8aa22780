"""Per-step schedules for learning rate, weight decay, EMA momentum and temperatures."""

from __future__ import annotations

import math
from collections.abc import Mapping


def cosine_schedule(
    step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then a half cosine from
    ``base`` to ``final`` at ``total_steps`` (held after)."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def set_weight_decay(optimizer, value: float) -> None:
    """Give every parameter group that decays (``decays=True``, as :func:`configure_optimizer` marks the
    weights) the weight decay ``value``; biases and norms keep none. For schedules such as DINO's and
    Alice's cosine from 0.04 to 0.4, called each step."""
    for group in optimizer.param_groups:
        if group.get("decays", False):
            group["weight_decay"] = value


def scaled_lr(lr: float, scaling: str, global_batch: int) -> float:
    """The learning rate for a global batch: ``"none"``, ``lr`` itself; ``"linear"``, ``lr`` read as the
    rate for 256 samples (Goyal et al. 2017; the SimCLR and SwAV papers give theirs so):
    ``lr × global_batch / 256``."""
    if scaling == "none":
        return lr
    if scaling == "linear":
        return lr * global_batch / 256
    raise ValueError(f"lr_scaling must be 'none' or 'linear', got {scaling!r}")


def configure_optimizer(
    module,
    optimizer: str,
    lr: float,
    weight_decay: float,
    warmup_epochs: float = 0.0,
    min_lr: float | None = None,
    lr_scales: Mapping[int, float] | None = None,
) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW, SGD (momentum 0.9) or LARS (SGD with a
    layer-wise trust ratio on the weights, :class:`~medssl.methods.lars.LARS`), no weight decay on
    biases and norms, a per-step linear warm-up then cosine to ``min_lr`` (``min_lr=None``: constant).
    ``lr_scales`` multiplies the rate of parameters (by ``id``; others 1.0), e.g. layer-wise decay; the
    schedule scales every group alike. Frozen parameters (``requires_grad=False``) are left out."""
    import torch

    scales = lr_scales or {}
    grouped: dict[tuple[bool, float], list] = {}
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            decays = not (parameter.ndim <= 1 or name.endswith(".bias"))
            grouped.setdefault((decays, scales.get(id(parameter), 1.0)), []).append(parameter)
    groups = [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale, "decays": decays}
        for (decays, scale), params in sorted(grouped.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    elif optimizer == "lars":
        from medssl.methods.lars import LARS

        opt = LARS(groups, lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adamw', 'sgd' or 'lars', got {optimizer!r}")
    trainer = module.trainer
    total = max(1, int(trainer.estimated_stepping_batches))
    per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
    warmup = int(warmup_epochs * per_epoch)
    final = 1.0 if min_lr is None else min(1.0, min_lr / lr) if lr > 0 else 1.0
    if min_lr is not None and min_lr > lr:  # e.g. a linearly scaled lr below an unscaled min_lr (Alice's README)
        import warnings

        message = f"min_lr {min_lr:g} is above the peak lr {lr:g}: the schedule holds lr instead of rising to it"
        warnings.warn(message, stacklevel=2)
    factor = lambda step: cosine_schedule(step, total, 1.0, final, warmup, 0.0)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
