"""Losses run in float32 under mixed precision: similarities divided by small temperatures, cross-
correlations near 1 and log-softmaxes lose too much in bfloat16/float16 (as solo-learn and DINO also do)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar, cast

import torch

F = TypeVar("F", bound=Callable)


def _to_float(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()  # float16/bfloat16 up; float32 and float64 stay as they are
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def full_precision(loss: F) -> F:
    """Run ``loss`` with autocast off and its half-precision tensor arguments (also inside lists) in float32."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return loss(*_to_float(args), **{k: _to_float(v) for k, v in kwargs.items()})

    # cast: the wrapper takes what ``loss`` takes and returns what it returns, but a decorator typed with
    # a callable TypeVar cannot say so of a new function (functools.wraps types it by the wrapper's own signature)
    return cast(F, wrapper)
