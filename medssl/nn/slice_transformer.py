"""f_inter of the Joint 2D/3D method (Nguyen et al., AAAI 2023): a post-norm transformer whose attention is
1D deformable attention (Xia et al. 2022, DAT) over the slice tokens of a volume.

Each query attends to a few keys sampled at learned, fractional positions of the sequence: one key per
cell of ``downsample_factor`` positions, moved by a learned offset of at most ``offset_scale`` positions.
No parameter depends on the sequence length, so one set of weights serves volumes of any depth.

The reference code passed ``[B, N, d]`` tokens to a channels-first block built with ``dim = N``, so its
deformable sampling ran over the 640 feature positions and the slices acted as channels. The paper means
attention across slices; :class:`SliceTransformer` does that by default (``attention_axis="slices"``) and
keeps the reference behaviour as ``attention_axis="features"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_AXES = ("slices", "features")


def reference_positions(n: int, downsample_factor: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres ``[ceil(n / s)]`` of the cells of ``s = downsample_factor`` consecutive input positions, in
    input-position units: ``(s - 1) / 2, s + (s - 1) / 2, ...``; a last, partial cell is centred on the
    positions it holds. With symmetric padding these are the centres of the offset convolution's windows."""
    starts = torch.arange(0, n, downsample_factor, device=device, dtype=torch.float32)
    ends = (starts + downsample_factor).clamp(max=n) - 1
    return (starts + ends) / 2


def sample_linear(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x [b, c, n]`` at fractional ``positions [b, m]`` → ``[b, c, m]``.

    Position ``p`` is in input-position units: ``p = i`` is exactly ``x[..., i]`` (``grid_sample`` with
    ``align_corners=True``: -1 and +1 are the centres of the first and last positions). Positions outside
    ``[0, n - 1]`` take the end value (border padding): every sampled key is then a real token, whereas zero
    padding would add a phantom zero token whose weight depends on the offsets."""
    n = x.shape[-1]
    grid_x = 2 * positions / max(n - 1, 1) - 1
    grid = torch.stack([grid_x, torch.zeros_like(grid_x)], dim=-1)[:, None]  # [b, 1, m, (x, y)]
    sampled = F.grid_sample(x[:, :, None], grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[:, :, 0]


def log_distance(relative: torch.Tensor) -> torch.Tensor:
    """``sign(r) · log(1 + |r|)``: keeps near distances distinct and far ones compressed, for any length."""
    return torch.sign(relative) * torch.log1p(relative.abs())


class DeformableAttention1D(nn.Module):
    """Deformable attention over a channels-first sequence ``x [B, dim, n]`` → ``[B, dim, n]``.

    - ``q = W_q x`` (1×1 conv). Split into ``offset_groups`` groups, each group's queries pass a depthwise
      conv (kernel ``offset_kernel_size``, stride ``downsample_factor``, ``ceil(n / s)`` outputs), GELU and a
      1×1 conv to one offset per cell, bounded by ``tanh · offset_scale`` (input-position units).
    - Sample positions = :func:`reference_positions` + offsets. Each group samples its own channels of ``x``
      there (:func:`sample_linear`); grouped 1×1 convs turn them into that group's heads' keys and values,
      so every key sits at one well-defined position.
    - All ``n`` queries attend to the ``ceil(n / s)`` sampled keys of their head's group, with a relative
      position bias: a small MLP of ``log_distance(query position - key position)`` per head (DAT's
      continuous position bias), which is what tells the block the order of the sequence.
    - Output 1×1 conv back to ``dim``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int | None = None,
        downsample_factor: int = 4,
        offset_scale: float = 2.0,
        offset_kernel_size: int = 6,
        offset_groups: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        offset_groups = heads if offset_groups is None else offset_groups
        _check_attention_sizes(dim, heads, dim_head, offset_groups, downsample_factor, offset_kernel_size)
        dim_head = dim // heads if dim_head is None else dim_head
        inner = heads * dim_head
        group_width = inner // offset_groups
        self.heads, self.dim_head, self.offset_groups = heads, dim_head, offset_groups
        self.downsample_factor, self.offset_kernel_size = downsample_factor, offset_kernel_size
        self.offset_scale = offset_scale

        self.to_q = nn.Conv1d(dim, inner, 1, bias=False)
        self.offset_conv = nn.Conv1d(
            group_width, group_width, offset_kernel_size, stride=downsample_factor, groups=group_width
        )
        self.to_offset = nn.Conv1d(group_width, 1, 1)
        self.to_k = nn.Conv1d(dim, inner, 1, groups=offset_groups, bias=False)
        self.to_v = nn.Conv1d(dim, inner, 1, groups=offset_groups, bias=False)
        hidden = max(dim // 4, 16)
        # No bias on the last layer: a constant per head shifts all of a query's logits alike, which the
        # softmax ignores, so it would be a parameter that never learns.
        self.position_bias = nn.Sequential(
            nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, heads // offset_groups, bias=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def _offset_padding(self, n: int) -> tuple[int, int]:
        """Left/right zero padding giving ``ceil(n / s)`` windows, centred on the cells when ``K - s`` is even."""
        s, k = self.downsample_factor, self.offset_kernel_size
        left = (k - s) // 2
        return left, k - s - left + (-n) % s

    def sample_positions(self, q: torch.Tensor) -> torch.Tensor:
        """Where each group samples its keys, ``[B, offset_groups, ceil(n / s)]`` in input-position units,
        from queries ``q [B, heads * dim_head, n]``."""
        b, _, n = q.shape
        grouped = q.reshape(b * self.offset_groups, -1, n)
        hidden = F.gelu(self.offset_conv(F.pad(grouped, self._offset_padding(n))))
        offsets = torch.tanh(self.to_offset(hidden)) * self.offset_scale  # [b * g, 1, m]
        reference = reference_positions(n, self.downsample_factor, device=q.device)
        return (reference + offsets[:, 0]).reshape(b, self.offset_groups, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim, n = x.shape
        g, h = self.offset_groups, self.heads
        q = self.to_q(x)
        positions = self.sample_positions(q)  # [b, g, m]
        m = positions.shape[-1]
        sampled = sample_linear(x.reshape(b * g, dim // g, n), positions.reshape(b * g, m)).reshape(b, dim, m)
        k, v = self.to_k(sampled), self.to_v(sampled)

        q, k, v = (t.reshape(b, h, self.dim_head, -1).transpose(-1, -2) for t in (q, k, v))  # [b, h, len, d]
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dim_head)  # [b, h, n, m]
        query_positions = torch.arange(n, device=x.device, dtype=positions.dtype)
        relative = query_positions[:, None] - positions[:, :, None, :]  # [b, g, n, m]
        bias = self.position_bias(log_distance(relative)[..., None])  # [b, g, n, m, h / g]
        logits = logits + bias.permute(0, 1, 4, 2, 3).reshape(b, h, n, m).to(logits.dtype)
        attention = self.dropout(logits.softmax(dim=-1))
        out = (attention @ v).transpose(-1, -2).reshape(b, h * self.dim_head, n)
        return self.to_out(out)


def _check_attention_sizes(
    dim: int, heads: int, dim_head: int | None, offset_groups: int, downsample_factor: int, offset_kernel_size: int
) -> None:
    """Refuse sizes the grouped convs cannot split, naming the numbers."""
    if dim_head is None and dim % heads:
        raise ValueError(f"heads={heads} must divide the attention's dim={dim} (or give dim_head)")
    if heads % offset_groups or dim % offset_groups:
        raise ValueError(f"offset_groups={offset_groups} must divide heads={heads} and dim={dim}")
    if offset_kernel_size < downsample_factor or (offset_kernel_size - downsample_factor) % 2:
        raise ValueError(
            f"offset_kernel_size={offset_kernel_size} must be >= downsample_factor={downsample_factor} and differ "
            "from it by an even number, so each offset window is centred on its cell"
        )


class SliceTransformerLayer(nn.Module):
    """``x = LN(x + Dropout(Attn(x))); x = LN(x + Dropout(FFN(x)))`` on tokens ``[B, N, d]``; the attention
    runs along the slices (``[B, d, N]``) or, as in the reference code, along the features (``[B, N, d]``)."""

    def __init__(self, attention: DeformableAttention1D, d_model: int, ffn_dim: int, dropout: float, axis: str):
        super().__init__()
        self.attention, self.axis = attention, axis
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention branch alone, ``[B, N, d]`` → ``[B, N, d]``."""
        if self.axis == "slices":
            return self.attention(tokens.transpose(1, 2)).transpose(1, 2)
        return self.attention(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm1(tokens + self.dropout(self.attend(tokens)))
        return self.norm2(tokens + self.dropout(self.ffn(tokens)))


class SliceTransformer(nn.Module):
    """Slice tokens ``[B, N, d_model]`` → ``[B, N, d_model]`` through ``layers`` post-norm deformable-attention
    layers (the reference: 4 layers, d 640, FFN 720 GELU, dropout 0.1, ``downsample_factor`` 4,
    ``offset_scale`` 2, ``offset_kernel_size`` 6).

    ``attention_axis="slices"`` (the paper): the attention's sequence is the slice axis, with
    ``dim = d_model``; any ``N`` works. ``attention_axis="features"`` (the reference code): the attention reads
    the tokens as ``n_slices`` channels over a sequence of ``d_model`` features, so it needs ``n_slices`` and
    refuses any other ``N``; ``heads`` must divide ``n_slices`` (8 heads for 64 slices, as in the reference).
    The reference also put its dropouts after each LayerNorm; here they sit on the residual branches, so every
    layer's output is normalised in training too.
    """

    def __init__(
        self,
        d_model: int = 640,
        layers: int = 4,
        ffn_dim: int = 720,
        dropout: float = 0.1,
        heads: int = 8,
        attention_axis: str = "slices",
        n_slices: int | None = None,
        downsample_factor: int = 4,
        offset_scale: float = 2.0,
        offset_kernel_size: int = 6,
    ):
        super().__init__()
        attention_dim = _attention_dim(attention_axis, d_model, n_slices)
        if attention_dim % heads:
            raise ValueError(
                f"heads={heads} must divide the attention's dim={attention_dim} "
                f"({'d_model' if attention_axis == 'slices' else 'n_slices'}, attention_axis={attention_axis!r})"
            )
        self._config = dict(
            d_model=d_model,
            layers=layers,
            ffn_dim=ffn_dim,
            dropout=dropout,
            heads=heads,
            attention_axis=attention_axis,
            n_slices=n_slices,
            downsample_factor=downsample_factor,
            offset_scale=offset_scale,
            offset_kernel_size=offset_kernel_size,
        )
        self.attention_axis, self.n_slices, self.d_model = attention_axis, n_slices, d_model
        self.layers = nn.ModuleList(
            SliceTransformerLayer(
                DeformableAttention1D(
                    attention_dim,
                    heads=heads,
                    downsample_factor=downsample_factor,
                    offset_scale=offset_scale,
                    offset_kernel_size=offset_kernel_size,
                ),
                d_model,
                ffn_dim,
                dropout,
                attention_axis,
            )
            for _ in range(layers)
        )

    def config(self) -> dict:
        """The constructor arguments, to rebuild this block from a file."""
        return dict(self._config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(f"expected slice tokens [B, N, {self.d_model}], got {list(tokens.shape)}")
        if self.attention_axis == "features" and tokens.shape[1] != self.n_slices:
            raise ValueError(
                f"attention_axis='features' was built for n_slices={self.n_slices} but got {tokens.shape[1]} slices; "
                "use attention_axis='slices' for volumes of varying depth"
            )
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens


def _attention_dim(attention_axis: str, d_model: int, n_slices: int | None) -> int:
    """The channel count of the attention: ``d_model`` across slices, ``n_slices`` across features."""
    if attention_axis == "slices":
        return d_model
    if attention_axis == "features":
        if n_slices is None:
            raise ValueError("attention_axis='features' needs n_slices (the attention's channels are the slices)")
        return n_slices
    raise ValueError(f"attention_axis must be one of {ATTENTION_AXES}, got {attention_axis!r}")
