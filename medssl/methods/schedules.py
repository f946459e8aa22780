"""Per-step schedules for learning rate, weight decay, EMA momentum and temperatures."""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, base: float, final: float,
                    warmup_steps: int = 0, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then a half cosine from
    ``base`` to ``final`` at ``total_steps`` (held after)."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))
