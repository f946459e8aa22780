"""Batched tensor operations behind device views: a whole batch in a few kernels, each sample with its
own parameters, on any device. Nothing here draws random numbers.

:func:`render_views` is the batched :func:`~medssl.data.geometric_views.render_view`: every sample's crop,
resize, flips and ``rot90`` at once. Linear resizing is separable, so it is a matrix per axis and sample
(:func:`resize_weights`, the antialiased triangle filter ``F.interpolate(..., antialias=True)`` uses,
restricted to the crop), applied by batched matrix products; flips reverse a matrix's rows, and
``rot90`` is a flip plus, for odd turns, a transpose. On a GPU these are a few GEMMs per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medssl.geometry import fields, geometry_ndim


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


def _view_axes(images: torch.Tensor, geometry: torch.Tensor, size: int | Sequence[int]):
    """Per axis: (crop start, crop length, flipped) ``[B]`` each, with ``rot90``'s flips folded in; the view
    sizes; and which samples are transposed (odd turns)."""
    ndim = images.ndim - 2
    if geometry_ndim(geometry) != ndim:
        raise ValueError(f"{geometry_ndim(geometry)}-D geometry for {ndim}-D images {tuple(images.shape)}")
    sizes = (int(size),) * ndim if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != ndim:
        raise ValueError(f"view size {sizes} for {ndim}-D images")
    f = fields(geometry.to(images.device, torch.float32))
    rot = f.rot[:, 0].round().long() % 4
    # rot90(A, k) = A flipped along x (k = 1), both axes (k = 2) or y (k = 3), then transposed for odd k
    none = torch.zeros_like(rot, dtype=torch.bool)
    extra = [none] * (ndim - 2) + [(rot == 2) | (rot == 3), (rot == 1) | (rot == 2)]
    axes = []
    for axis in range(ndim):
        extent = images.shape[2 + axis]
        start = torch.round(f.start[:, axis] * extent)
        length = torch.round(f.size[:, axis] * extent)
        axes.append((start, length, (f.flip[:, axis] > 0.5) ^ extra[axis]))
    odd = rot % 2 == 1
    if sizes[-1] != sizes[-2] and (images.device.type != "cpu" or bool(odd.any())):
        if bool(odd.any()):
            raise ValueError(f"rot90 by an odd number of turns needs a square H × W view, got {sizes}")
    return axes, sizes, odd


def render_views(images: torch.Tensor, geometry: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Every sample's view of ``images`` ``[B, C, *spatial]`` (2D or 3D) as its ``geometry`` ``[B, 4n + 1]``
    records it (:mod:`medssl.geometry`): crop, linear resize to ``size`` (antialiased when shrinking),
    flips, ``rot90`` in the last two axes. Equal, to float rounding, to
    :func:`~medssl.data.geometric_views.render_view` of each sample. uint8 images are scaled to 0..1.

    Two exact routes: on a CPU batch where no crop is shrunk, bilinear ``grid_sample`` with source
    coordinates clamped to each crop (what non-antialiased interpolation of the crop does); otherwise
    one resampling matrix per axis and sample (:func:`resize_weights`) in batched matrix products, which
    a GPU runs as a few GEMMs and which also antialias."""
    from medssl.nn.inputs import to_float

    images = to_float(images)
    axes, sizes, odd = _view_axes(images, geometry, size)
    on_cpu = images.device.type == "cpu"  # the check below syncs: a GPU always takes the matrix route
    if on_cpu and all(bool((length <= n).all()) for (_, length, _), n in zip(axes, sizes, strict=True)):
        return _sample_views(images, axes, sizes, odd)
    out = images
    for axis, (start, length, flipped) in enumerate(axes):
        weights = resize_weights(start, length, images.shape[2 + axis], sizes[axis])
        weights = torch.where(flipped[:, None, None], weights.flip(1), weights)
        out = _apply_axis(out, weights, axis)
    if sizes[-1] == sizes[-2]:
        out = torch.where(odd.reshape(-1, *([1] * (out.ndim - 1))), out.transpose(-2, -1), out)
    return out.contiguous()


def _sample_views(images: torch.Tensor, axes, sizes: tuple[int, ...], odd: torch.Tensor) -> torch.Tensor:
    """The views by ``grid_sample`` (crops enlarged or kept, never shrunk): output pixel ``i`` of an axis
    reads source ``start + clamp(scale·(i + ½) − ½, 0, length − 1)``, interpolation's own rule."""
    import torch.nn.functional as F

    coords = []
    for (start, length, flipped), n, extent in zip(axes, sizes, images.shape[2:], strict=True):
        i = torch.arange(n, dtype=torch.float32, device=images.device)[None]
        source = ((length[:, None] / n) * (i + 0.5) - 0.5).clamp(min=0.0)
        source = torch.minimum(source, length[:, None] - 1) + start[:, None]
        source = torch.where(flipped[:, None], source.flip(1), source)
        coords.append((2 * source + 1) / extent - 1)  # align_corners=False normalisation
    ndim = len(sizes)
    b = images.shape[0]
    # each coordinate broadcast over the grid; odd turns swap the roles of the last two axes
    shaped = []
    for axis in range(ndim):
        view = [b] + [1] * ndim
        view[1 + axis] = sizes[axis]
        shaped.append(coords[axis].reshape(view))
    if sizes[-1] == sizes[-2]:
        swap = odd.reshape(-1, *([1] * ndim))
        y, x = shaped[-2], shaped[-1]
        shaped[-2] = torch.where(swap, y.transpose(-2, -1), y)
        shaped[-1] = torch.where(swap, x.transpose(-2, -1), x)
    full = (b, *sizes)
    grid = torch.stack([shaped[axis].expand(full) for axis in reversed(range(ndim))], dim=-1)  # x, y(, z)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def separable_filter(images: torch.Tensor, kernels: Sequence[torch.Tensor], padding: str = "reflect") -> torch.Tensor:
    """Filter every sample of ``images`` ``[B, C, *spatial]`` with its own separable kernel: ``kernels[a]``
    ``[B, K_a]`` (odd ``K_a``, centred) along spatial axis ``a``, one grouped convolution per axis.
    ``padding``: ``"reflect"``, ``"replicate"`` or ``"zeros"`` at the borders (``K_a // 2`` pixels)."""
    import torch.nn.functional as F

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
