"""Batched tensor operations behind device views: a whole batch in a few kernels, each sample with its
own parameters, on any device. Nothing here draws random numbers.

:func:`render_view` renders one geometric view (crop, resize, flips, ``rot90``; :mod:`medssl.geometry`)
and :func:`render_views` a batch of them. Linear resizing is separable, so on an accelerator it is a
matrix per axis and sample (:func:`resize_weights`, the antialiased triangle filter
``F.interpolate(..., antialias=True)`` uses, restricted to the crop), applied by batched matrix
products; flips reverse a matrix's rows, and ``rot90`` is a flip plus, for odd turns, a transpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medssl.geometry import fields, geometry_ndim
from medssl.nn.inputs import to_float


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """``[B, out_size, in_size]`` matrices that resample the window ``[start, start + length)`` (pixels,
    ``[B]``) of an axis of ``in_size`` pixels to ``out_size`` pixels: linear interpolation with
    ``align_corners=False``, antialiased when shrinking (PyTorch's and Pillow's triangle filter of
    half-width ``max(1, length / out_size)``), edges clamped to the window. Row ``i`` is output pixel ``i``."""
    dtype = torch.float64 if start.dtype == torch.float64 else torch.float32
    start, length = start.to(dtype)[:, None, None], length.to(dtype)[:, None, None]
    scale = length / out_size
    support = scale.clamp_min(1.0)
    centre = scale * (torch.arange(out_size, dtype=dtype, device=start.device)[None, :, None] + 0.5)
    j = torch.arange(in_size, dtype=dtype, device=start.device)[None, None, :] - start  # position in the window
    weights = (1.0 - ((j + 0.5 - centre) / support).abs()).clamp_min(0.0)
    weights = weights * ((j >= 0) & (j < length))
    return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


def _apply_axis(images: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """Contract spatial ``axis`` (0-based, of ``images [B, C, *spatial]``) with ``weights [B, out, in]``."""
    moved = images.movedim(2 + axis, -1)  # [B, C, ..., in]
    shape = moved.shape
    flat = moved.reshape(shape[0], -1, shape[-1])  # [B, rest, in]
    out = torch.bmm(flat, weights.transpose(1, 2).to(flat.dtype))  # [B, rest, out]
    return out.reshape(*shape[:-1], weights.shape[1]).movedim(-1, 2 + axis)


def view_sizes(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """A view size as one side per spatial axis (an ``int`` is the side along every axis)."""
    sizes = (int(size),) * ndim if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != ndim:
        raise ValueError(f"view size {sizes} for a {ndim}-D image")
    return sizes


def _resize(crop: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Linear resampling (antialiased when shrinking, ``align_corners=False``) of ``crop`` ``[C, *s]`` to ``size``."""
    if tuple(crop.shape[1:]) == size:
        return crop
    if crop.ndim == 3:
        return F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    if crop.ndim != 4:
        raise ValueError(f"views of 2D [C, H, W] or 3D [C, D, H, W] images, got {tuple(crop.shape)}")
    # trilinear with antialiasing, separably: H × W (depth as channels), then D (width as channels);
    # an axis kept at its size is copied exactly
    view = crop
    if tuple(view.shape[2:]) != size[1:]:
        view = F.interpolate(view, size=size[1:], mode="bilinear", antialias=True, align_corners=False)
    if view.shape[1] != size[0]:
        view = F.interpolate(
            view.permute(0, 3, 1, 2), size=(size[0], size[1]), mode="bilinear", antialias=True, align_corners=False
        ).permute(0, 2, 3, 1)
    return view.contiguous()


def render_view(image: torch.Tensor, geometry: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Crop ``image`` ``[C, H, W]`` or ``[C, D, H, W]`` with the box of ``geometry``, resize (linear,
    antialiased) to ``size`` (the size before rotation), flip, rotate in the last two axes: the
    deterministic half of a geometric view, so tests and callers can reproduce a view from its record."""
    ndim = image.ndim - 1
    if geometry_ndim(geometry) != ndim:
        raise ValueError(f"{geometry_ndim(geometry)}-D geometry for a {ndim}-D image {tuple(image.shape)}")
    size = view_sizes(size, ndim)
    f = fields(geometry)
    box = tuple(
        slice(round(float(s) * d), round(float(s) * d) + round(float(c) * d))
        for s, c, d in zip(f.start, f.size, image.shape[1:], strict=True)
    )
    view = _resize(to_float(image)[(slice(None), *box)], size)
    flips = [1 + axis for axis in range(ndim) if f.flip[axis] > 0.5]
    if flips:
        view = view.flip(flips)
    return torch.rot90(view, int(f.rot) % 4, dims=(-2, -1))


def render_views(images: torch.Tensor, geometry: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Every sample's view of ``images`` ``[B, C, *spatial]`` (2D or 3D) as its ``geometry`` ``[B, 4n + 1]``
    records it: :func:`render_view` of each sample, to float rounding. uint8 images are scaled to 0..1.

    On an accelerator: one resampling matrix per axis and sample (:func:`resize_weights`), flips as
    reversed rows, odd turns as a transpose, so the batch is a few batched GEMMs with no host sync. On a
    CPU: :func:`render_view` per sample, whose ``F.interpolate`` on one cached crop is faster there than
    any batched route measured (dense matrices stream the batch from memory at every axis;
    ``grid_sample`` costs 2–4×)."""
    images = to_float(images)
    ndim = images.ndim - 2
    if geometry_ndim(geometry) != ndim:
        raise ValueError(f"{geometry_ndim(geometry)}-D geometry for {ndim}-D images {tuple(images.shape)}")
    sizes = view_sizes(size, ndim)
    if images.device.type == "cpu":
        if not len(images):
            return images.new_empty((0, images.shape[1], *sizes))
        return torch.stack([render_view(image, g, sizes) for image, g in zip(images, geometry, strict=True)])
    return render_views_by_matrices(images, geometry, sizes)


def rot90_flips(turns: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[B, ndim]``: the flips that, followed by a transpose of the last two axes for odd ``turns``, make
    ``rot90(·, turns, dims=(-2, -1))``: ``rot90`` by ``k`` flips x (``k = 1``), both (``k = 2``) or y (``k = 3``)."""
    k = turns.long() % 4
    last_two = torch.stack([k >= 2, (k == 1) | (k == 2)], 1)
    return torch.cat([torch.zeros(len(k), ndim - 2, dtype=torch.bool, device=k.device), last_two], 1)


def render_views_by_matrices(images: torch.Tensor, geometry: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """:func:`render_views`' accelerator route on float ``images`` (any device): per axis, the batch times
    each sample's resampling matrix, flips folded into the matrices, then a transpose for odd turns."""
    ndim = images.ndim - 2
    f = fields(geometry.to(images.device, torch.float32))
    rot = f.rot[:, 0].round().long() % 4
    extra = rot90_flips(rot, ndim).unbind(1)
    out = images
    for axis in range(ndim):
        extent = images.shape[2 + axis]
        start, length = torch.round(f.start[:, axis] * extent), torch.round(f.size[:, axis] * extent)
        weights = resize_weights(start, length, extent, sizes[axis])
        flipped = (f.flip[:, axis] > 0.5) ^ extra[axis]
        weights = torch.where(flipped[:, None, None], weights.flip(1), weights)
        out = _apply_axis(out, weights, axis)
    if sizes[-1] == sizes[-2]:
        out = torch.where((rot % 2 == 1).reshape(-1, *([1] * (out.ndim - 1))), out.transpose(-2, -1), out)
    return out.contiguous()


def separable_filter(images: torch.Tensor, kernels: Sequence[torch.Tensor], padding: str = "reflect") -> torch.Tensor:
    """Filter every sample of ``images`` ``[B, C, *spatial]`` with its own separable kernel: ``kernels[a]``
    ``[B, K_a]`` (odd ``K_a``, centred) along spatial axis ``a``, one grouped convolution per axis.
    ``padding``: ``"reflect"``, ``"replicate"`` or ``"zeros"`` at the borders (``K_a // 2`` pixels)."""
    b, c, *spatial = images.shape
    ndim = len(spatial)
    if len(kernels) != ndim:
        raise ValueError(f"{len(kernels)} kernels for {ndim} spatial axes")
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    out = images.reshape(1, b * c, *spatial)
    for axis, kernel in enumerate(kernels):
        size = kernel.shape[-1]
        if size % 2 != 1:
            raise ValueError(f"kernels need an odd length, got {size} along axis {axis}")
        radius = size // 2
        if radius == 0:
            out = out * kernel.to(out.dtype).repeat_interleave(c, 0).reshape(1, b * c, *([1] * ndim))
            continue
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        mode = "constant" if padding == "zeros" else padding
        padded = F.pad(out, pad, mode=mode)
        shape = [1] * ndim
        shape[axis] = size
        weight = kernel.to(out.dtype).repeat_interleave(c, 0).reshape(b * c, 1, *shape)
        out = conv(padded, weight, groups=b * c)
    return out.reshape(b, c, *spatial)


def mix_channels(
    images: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Every pixel's channels through its sample's affine map: ``matrix[b] @ pixel + bias[b]`` for
    ``images`` ``[B, C, *spatial]``, ``matrix`` ``[B, C_out, C]`` and ``bias`` ``[B, C_out]``: one batched
    matrix product (colour and stain maps are 3 × 3). ``images`` is left as it was; the result goes to
    ``out`` (a contiguous ``[B, C_out, *spatial]`` tensor other than ``images``: a chain of maps can reuse
    two buffers, where fresh ones cost page faults on a CPU) or a new tensor."""
    b, c, *spatial = images.shape
    flat = images.reshape(b, c, -1)
    matrix = matrix.to(flat.dtype)
    target = None if out is None else out.view(b, matrix.shape[1], -1)
    if bias is None:
        result = torch.bmm(matrix, flat, out=target)
    else:
        result = torch.baddbmm(bias.to(flat.dtype)[:, :, None], matrix, flat, out=target)
    return result.reshape(b, matrix.shape[1], *spatial)


def gaussian_kernels(sigma: torch.Tensor, radius: torch.Tensor, largest: int) -> torch.Tensor:
    """``[B, 2·largest + 1]`` normalised Gaussian kernels of ``sigma`` ``[B]`` truncated at each sample's own
    ``radius`` ``[B]`` (zero beyond it, so one kernel length serves a batch and each sample is filtered as
    with its own length); a sample whose ``sigma`` is 0 gets the identity (a centred 1)."""
    x = torch.arange(-largest, largest + 1, dtype=sigma.dtype, device=sigma.device)[None]
    blurred = sigma[:, None] > 0
    safe = torch.where(blurred, sigma[:, None], torch.ones_like(sigma[:, None]))
    kernels = torch.exp(-(x**2) / (2 * safe**2)) * (x.abs() <= radius[:, None])
    kernels = torch.where(blurred, kernels, (x == 0).to(kernels.dtype))
    return kernels / kernels.sum(-1, keepdim=True)
