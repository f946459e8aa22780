"""Augmentations with explicit parameters: drawn once per sample, applied per sample or per batch.

A :class:`ViewOp` splits a random transform in two: :meth:`~ViewOp.draw` takes every random number a
sample needs from torch's global generator (which :func:`~medssl.data.seeding.seeded` fixes per
(seed, epoch, index)) and returns them as a dictionary of fixed-shape tensors, and :meth:`~ViewOp.apply`
/ :meth:`~ViewOp.apply_batch` use them without drawing anything. So the same views come out of two paths:

- **CPU views** (``views_on="cpu"``): the DataLoader worker draws and applies per sample
  (``op(sample)``, a MONAI-style dictionary transform); this is also the test oracle.
- **Device views** (``views_on="device"``): the worker only draws (cheap: a few dozen scalars), the
  loader sends uint8 pixels and the parameters, and the DataModule's ``on_after_batch_transfer`` applies
  the whole batch on the training device with :meth:`~ViewOp.apply_batch`.

Rules for an op: ``draw`` returns the same keys and shapes whatever it draws (a skipped op returns its
identity parameters and a false ``on``), so parameters collate; ``apply`` and ``apply_batch`` never draw
(noise comes from a drawn seed), so drawing all of a view's parameters first and applying them after
consumes the generator exactly as drawing and applying op by op does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medssl.nn.inputs import to_float

Params = dict[str, torch.Tensor]


class ViewOp:
    """One augmentation step with explicit parameters (see the module docstring). Images are
    ``[C, *spatial]`` for :meth:`apply` and ``[B, C, *spatial]`` for :meth:`apply_batch`, float 0..1
    (uint8 inputs are scaled by :func:`~medssl.nn.inputs.to_float`); parameters of a batch are the
    per-sample parameters stacked along a first axis."""

    key: str = "image"

    def draw(self, shape: tuple[int, ...]) -> Params:
        """This op's random parameters for an image of spatial ``shape``, from torch's global generator."""
        raise NotImplementedError

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The spatial shape this op turns ``shape`` into (most ops keep it)."""
        return shape

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        """One image ``[C, *spatial]``: the per-sample path."""
        raise NotImplementedError

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """A batch ``[B, C, *spatial]`` with stacked parameters, on whatever device they are on."""
        raise NotImplementedError

    def __call__(self, sample: dict) -> dict:
        """Per-sample dictionary transform: draw, then apply to ``sample[self.key]``."""
        image = to_float(sample[self.key])
        out = dict(sample)
        out[self.key] = self.apply(image, self.draw(tuple(image.shape[1:])))
        return out


class Compose(ViewOp):
    """Ops in sequence; itself an op, whose parameters are its members' in order (``"0"``, ``"1"``, ...
    prefixes keep them apart)."""

    def __init__(self, ops: Sequence[Any], key: str = "image"):
        self.ops = list(ops)
        self.key = key

    def __call__(self, sample: dict) -> dict:
        for op in self.ops:
            sample = op(sample)
        return sample

    def _view_ops(self) -> list[ViewOp]:
        foreign = [type(op).__name__ for op in self.ops if not isinstance(op, ViewOp)]
        if foreign:
            raise TypeError(
                f"device views need every step to be a medssl ViewOp; {', '.join(foreign)} draws its own "
                "parameters inside the transform: use views_on='cpu' for this view"
            )
        return self.ops

    def draw(self, shape: tuple[int, ...]) -> Params:
        params: Params = {}
        for k, op in enumerate(self._view_ops()):
            params.update({f"{k}.{name}": value for name, value in op.draw(shape).items()})
            shape = op.out_shape(shape)
        return params

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for op in self._view_ops():
            shape = op.out_shape(shape)
        return shape

    def _split(self, params: Params) -> list[Params]:
        parts: list[Params] = [{} for _ in self.ops]
        for name, value in params.items():
            k, _, inner = name.partition(".")
            parts[int(k)][inner] = value
        return parts

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        for op, part in zip(self._view_ops(), self._split(params), strict=True):
            image = op.apply(image, part)
        return image

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        for op, part in zip(self._view_ops(), self._split(params), strict=True):
            images = op.apply_batch(images, part)
        return images


def is_device_capable(view: Any) -> bool:
    """Whether ``view`` can be drawn on the loader and applied on the device (a :class:`ViewOp` whose
    members, if it composes any, all are)."""
    if isinstance(view, Compose):
        return all(is_device_capable(op) for op in view.ops)
    return isinstance(view, ViewOp)


def where_on(on: torch.Tensor, changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
    """Per sample, ``changed`` where ``on`` ``[B]`` is true, else ``unchanged`` (``[B, ...]`` both): how a
    batched op skips the samples whose draw said no."""
    return torch.where(on.reshape(-1, *([1] * (changed.ndim - 1))).bool(), changed, unchanged)


def flag(value: bool) -> torch.Tensor:
    """A drawn yes/no as a parameter tensor."""
    return torch.tensor(bool(value))


def coin(prob: float) -> bool:
    """True with probability ``prob``, from torch's generator (no draw when ``prob`` is 1: ops applied
    always consume no number for it)."""
    return prob >= 1.0 or bool(torch.rand(()) < prob)


def runs_whole_batch(images: torch.Tensor) -> bool:
    """Whether a batched step runs on every sample of ``images`` and then keeps the changed samples
    (off a CPU: asking which samples changed would wait for the device) rather than running on the
    changed samples only (on a CPU, where that saves their work)."""
    return images.device.type != "cpu"


def on_rows(out: torch.Tensor, rows: torch.Tensor | Sequence[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``out[rows] = fn(out[rows])`` in place; the whole batch at once when ``rows`` are all of it."""
    index = torch.as_tensor(rows, dtype=torch.long, device=out.device)
    if len(index) == len(out) and bool((index == torch.arange(len(out), device=out.device)).all()):
        out.copy_(fn(out))
    elif len(index):
        out[index] = fn(out[index])


class RandomViewOp(ViewOp):
    """A step applied with probability ``prob``: one coin per sample, drawn first (none when ``prob`` is
    1), then the step's own draws (:meth:`draw_on`) if it came up; a skipped sample gets the step's
    :meth:`identity` parameters (same keys and shapes, so they collate) and ``on`` false, and is left
    exactly as it is.

    A step says what it does to a batch (:meth:`transform_batch`); :meth:`transform`, one image, is a
    batch of one unless a step keeps its own per-sample code as the oracle. ``keys``: the sample keys
    the dictionary form changes (one coin for all, each key its own draws).
    """

    def __init__(self, keys: Sequence[str] | str = "image", prob: float = 1.0):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.key = self.keys[0]
        self.prob = float(prob)

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        """The step's random parameters for an image of spatial ``shape``, given that it applies."""
        raise NotImplementedError

    def identity(self, shape: tuple[int, ...]) -> Params:
        """Parameters of the same keys and shapes as :meth:`draw_on`'s, for a skipped sample."""
        raise NotImplementedError

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """The step on every sample of a float batch ``[B, C, *spatial]``; a new tensor."""
        raise NotImplementedError

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        """The step on one float image ``[C, *spatial]``."""
        return self.transform_batch(image[None], {name: value[None] for name, value in params.items()})[0]

    def draw(self, shape: tuple[int, ...]) -> Params:
        on = coin(self.prob)
        return {"on": flag(on), **(self.draw_on(shape) if on else self.identity(shape))}

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        image = to_float(image)
        return self.transform(image, params) if bool(params["on"]) else image

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        images = to_float(images)
        on = params["on"].to(images.device).bool()
        if runs_whole_batch(images):
            return where_on(on, self.transform_batch(images, params), images)
        index = on.nonzero()[:, 0]
        if len(index) == len(on):
            return self.transform_batch(images, params)
        out = images.clone()
        on_rows(out, index, lambda chosen: self.transform_batch(chosen, {k: v[index] for k, v in params.items()}))
        return out

    def __call__(self, sample: dict) -> dict:
        """Per sample: the coin, then for each key its own draws; a skipped sample is returned as it is."""
        if not coin(self.prob):
            return sample
        out = dict(sample)
        for key in self.keys:
            image = to_float(sample[key])
            out[key] = self.transform(image, self.draw_on(tuple(image.shape[1:])))
        return out


#: where a sample carries its views' parameters between the loader and the device
VIEW_PARAMS = "view_params"


class DeviceViews:
    """A multi-view transform that can run either way. ``transform(sample)`` is the CPU path;
    :meth:`draw_sample` is the loader's half of the device path (the sample's pixels as they are, plus
    every view's parameters under :data:`VIEW_PARAMS`), and :meth:`apply_batch` the device's half (the
    collated batch with its views, as the CPU path would have collated them)."""

    def draw_sample(self, sample: dict) -> dict:
        raise NotImplementedError

    def apply_batch(self, batch: dict) -> dict:
        raise NotImplementedError


class DrawViewsd:
    """The dataset transform of device views: ``views.draw_sample`` (under the dataset's per-sample seed)."""

    def __init__(self, views: DeviceViews):
        self.views = views

    def __call__(self, sample: dict) -> dict:
        return self.views.draw_sample(sample)


#: samples per piece when device views run on a CPU: a piece's images stay in the core's cache through
#: every op of a view (measured: a chain of elementwise ops costs 0.35 ms per 224² RGB sample in pieces
#: of 1–2 and 1.6 ms in one batch of 64, which streams from memory at every op); see bench_training.py
CPU_PIECE = 2


def apply_device_views(views: DeviceViews | None, batch: Any, piece: int | None = None) -> Any:
    """``views.apply_batch(batch)`` for a batch that carries view parameters (training batches of device
    views), in float32 whatever autocast is on; any other batch unchanged. What DataModules call in
    ``on_after_batch_transfer``. ``piece``: samples per call (default: the whole batch on an accelerator,
    :data:`CPU_PIECE` on a CPU), the pieces' outputs concatenated."""
    if views is None or not isinstance(batch, dict) or VIEW_PARAMS not in batch:
        return batch
    device = next((v.device for v in batch.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    size = next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))
    piece = piece or (CPU_PIECE if device.type == "cpu" else size)
    with torch.autocast(device_type=device.type, enabled=False):
        if piece >= size:
            return views.apply_batch(batch)
        parts = [views.apply_batch(_rows(batch, start, start + piece)) for start in range(0, size, piece)]
    return _concatenate(parts)


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a collated batch (tensors sliced along their first axis, lists of
    per-sample values sliced, containers recursed)."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: _rows(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, list) and batch and isinstance(batch[0], (torch.Tensor, dict, list)):
        return [_rows(v, start, stop) for v in batch]  # a list of views / per-view parameters
    if isinstance(batch, (list, tuple)):
        return batch[start:stop]  # per-sample strings, ids
    return batch


def _concatenate(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, list) and first and isinstance(first[0], (torch.Tensor, dict, list)):
        return [_concatenate([p[i] for p in parts]) for i in range(len(first))]
    if isinstance(first, (list, tuple)):
        return [x for p in parts for x in p]
    return first
