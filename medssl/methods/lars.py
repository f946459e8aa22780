"""LARS (You et al. 2017) as the SwAV, DeepCluster-v2 and joint 2D/3D recipes use it: SGD whose step for
each weight tensor is rescaled by a trust ratio, so every layer moves by about the same fraction of its
norm whatever its gradient's scale. This is Apex's ``LARC(clip=False)``, without Apex."""

from __future__ import annotations

import torch


class LARS(torch.optim.SGD):
    """SGD (momentum 0.9) with LARS's layer-wise trust ratio on the groups marked ``decays=True`` (the
    weights; :func:`~medssl.methods.schedules.configure_optimizer` leaves biases and norms out, as the
    LARS papers advise, while the reference code adapted them too). Per tensor ``p`` with gradient ``g``
    and the group's weight decay ``λ``::

        g ← (g + λ p) · η ‖p‖ / (‖g‖ + λ ‖p‖ + ε)        (only where ‖p‖ > 0 and ‖g‖ > 0)

    then a plain SGD step with the group's learning rate and no further decay. ``trust_coefficient``
    η = 0.001 as in LARC."""

    def __init__(self, params, lr: float, momentum: float = 0.9, trust_coefficient: float = 1e-3, eps: float = 1e-8):
        super().__init__(params, lr=lr, momentum=momentum)
        self.trust_coefficient, self.eps = trust_coefficient, eps

    @torch.no_grad()
    def step(self, closure=None):  # pyright: ignore[reportIncompatibleMethodOverride]  (SGD's overloads)
        decays = []
        for group in self.param_groups:
            decays.append(group["weight_decay"])
            if not group.get("decays", False):
                continue
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                if p_norm > 0 and g_norm > 0:
                    ratio = self.trust_coefficient * p_norm / (g_norm + decay * p_norm + self.eps)
                    p.grad.add_(p, alpha=decay).mul_(ratio)
            group["weight_decay"] = 0.0  # already in the gradient
        try:
            return super().step(closure)
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
