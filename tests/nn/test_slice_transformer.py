"""f_inter of the Joint 2D/3D method: 1D deformable attention and the post-norm slice transformer."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch

from medssl.nn.slice_transformer import (
    DeformableAttention1D,
    SliceTransformer,
    SliceTransformerLayer,
    reference_positions,
)


def _transformer(axis: str, n_slices: int | None = None, layers: int = 1, **kwargs) -> SliceTransformer:
    torch.manual_seed(0)
    model = SliceTransformer(
        d_model=32, layers=layers, ffn_dim=24, dropout=0.0, heads=4, attention_axis=axis, n_slices=n_slices, **kwargs
    )
    return model.eval()


def _layers(model: SliceTransformer) -> list[SliceTransformerLayer]:
    return [cast(SliceTransformerLayer, layer) for layer in model.layers]


def _spread_offsets(attention: DeformableAttention1D, gain: float = 20.0) -> None:
    """Make the offsets large and varied (tanh near saturation), so sampling leaves the integer grid and
    some positions fall outside the sequence."""
    assert attention.to_offset.bias is not None
    with torch.no_grad():
        attention.to_offset.weight.normal_(0, gain)
        attention.to_offset.bias.normal_(0, 1)


# --- the attention axis is what it says --------------------------------------------------------------


def test_identical_slices_stay_identical_only_when_attending_across_slices():
    """Across slices, a volume of identical slice tokens samples identical keys (border padding), so every
    slice's output is the same; the features variant mixes slices as channels and tells them apart."""
    token = torch.randn(1, 1, 32)
    tokens = token.expand(2, 8, 32).clone()
    out = _transformer("slices", layers=2)(tokens)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    out = _transformer("features", n_slices=8, layers=2)(tokens)
    assert (out - out[:, :1]).abs().amax() > 1e-2


def test_attention_branch_is_constant_along_its_own_sequence_axis():
    """The attention alone maps a sequence constant along its axis to a constant sequence. Tokens constant
    over slices stay constant over slices only in ``slices`` mode; tokens constant over features stay
    constant over features only in ``features`` mode."""
    across_slices = _layers(_transformer("slices"))[0]
    across_features = _layers(_transformer("features", n_slices=8))[0]
    same_slices = torch.randn(2, 1, 32).expand(2, 8, 32)
    same_features = torch.randn(2, 8, 1).expand(2, 8, 32)
    with torch.no_grad():
        a, b = across_slices.attend(same_slices), across_features.attend(same_slices)
        c, d = across_features.attend(same_features), across_slices.attend(same_features)
    torch.testing.assert_close(a, a[:, :1].expand_as(a))
    assert (b - b[:, :1]).abs().amax() > 1e-3
    torch.testing.assert_close(c, c[..., :1].expand_as(c))
    assert (d - d[..., :1]).abs().amax() > 1e-3


def test_slices_mode_mixes_all_slices_and_takes_any_depth_while_features_mode_refuses_it():
    model = _transformer("slices")
    tokens = torch.randn(1, 8, 32)
    moved = tokens.clone()
    moved[0, 5] += 1.0
    changed = (model(moved) - model(tokens)).abs().amax(dim=-1)[0]
    assert (changed > 1e-4).all()  # every slice, not only slice 5, sees the change
    assert model(torch.randn(2, 16, 32)).shape == (2, 16, 32)
    assert _layers(model)[0].attention.to_q.in_channels == 32  # the channels are the features

    features = _transformer("features", n_slices=8)
    assert _layers(features)[0].attention.to_q.in_channels == 8  # the channels are the slices
    assert features(tokens).shape == (1, 8, 32)
    with pytest.raises(ValueError, match="n_slices=8 but got 16"):
        features(torch.randn(1, 16, 32))


def test_slice_order_matters_across_slices():
    """Reversing the slices is not just reversing the outputs: the position bias and the offset windows
    know the order (a set-style attention would be equivariant)."""
    model = _transformer("slices")
    tokens = torch.randn(1, 9, 32)
    forward, backward = model(tokens), model(tokens.flip(1)).flip(1)
    assert (forward - backward).abs().amax() > 1e-3


def test_sizes_are_validated_with_the_numbers():
    with pytest.raises(ValueError, match="heads=8 must divide the attention's dim=12"):
        SliceTransformer(d_model=32, heads=8, attention_axis="features", n_slices=12)
    with pytest.raises(ValueError, match="heads=3 must divide the attention's dim=32"):
        SliceTransformer(d_model=32, heads=3)
    with pytest.raises(ValueError, match="needs n_slices"):
        SliceTransformer(d_model=32, attention_axis="features")
    with pytest.raises(ValueError, match="'depth'"):
        SliceTransformer(d_model=32, attention_axis="depth")
    with pytest.raises(ValueError, match="offset_kernel_size=5"):
        DeformableAttention1D(16, heads=2, downsample_factor=4, offset_kernel_size=5)
    SliceTransformer(d_model=32, heads=8, attention_axis="features", n_slices=64)  # the reference's sizes


def test_config_rebuilds_the_same_block():
    model = _transformer("features", n_slices=8, layers=2)
    rebuilt = SliceTransformer(**model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert all(isinstance(v, (int, float, str, type(None))) for v in model.config().values())


# --- the deformable attention against a naive implementation -----------------------------------------


def _naive_deformable_attention(module: DeformableAttention1D, x: torch.Tensor) -> torch.Tensor:
    """Loops over batch, groups, heads, queries and sampled keys; interpolation written out by hand."""
    b_size, dim, n = x.shape
    g_count, heads, dh, s = module.offset_groups, module.heads, module.dim_head, module.downsample_factor
    kernel = module.offset_kernel_size
    inner = heads * dh
    width = inner // g_count  # query channels per group
    x_width = dim // g_count  # input channels per group
    wq = module.to_q.weight[:, :, 0]
    wk, wv = module.to_k.weight[:, :, 0], module.to_v.weight[:, :, 0]  # [inner, x_width]
    b_off, b_last = module.offset_conv.bias, module.to_offset.bias
    assert b_off is not None and b_last is not None
    w_off, w_last = module.offset_conv.weight[:, 0], module.to_offset.weight[0, :, 0]  # [width, kernel], [width]
    l1, l2 = module.position_bias[0], module.position_bias[2]
    m = math.ceil(n / s)
    left = (kernel - s) // 2
    out = torch.zeros(b_size, inner, n, dtype=x.dtype)
    for b in range(b_size):
        q = wq @ x[b]  # [inner, n]
        for g in range(g_count):
            qg = q[g * width : (g + 1) * width]
            xg = x[b, g * x_width : (g + 1) * x_width]
            positions = []
            for j in range(m):
                hidden = torch.zeros(width, dtype=x.dtype)
                for c in range(width):
                    total = b_off[c]
                    for t in range(kernel):
                        i = j * s - left + t
                        if 0 <= i < n:
                            total = total + w_off[c, t] * qg[c, i]
                    hidden[c] = torch.nn.functional.gelu(total)
                offset = torch.tanh(hidden @ w_last + b_last[0]) * module.offset_scale
                start, end = j * s, min(j * s + s, n) - 1
                positions.append((start + end) / 2 + offset)
            keys, values = [], []
            for p in positions:
                p = p.clamp(0, n - 1)
                i0 = int(torch.floor(p))
                i1 = min(i0 + 1, n - 1)
                w = p - i0
                feature = xg[:, i0] * (1 - w) + xg[:, i1] * w
                keys.append(wk[g * width : (g + 1) * width] @ feature)
                values.append(wv[g * width : (g + 1) * width] @ feature)
            for hg in range(heads // g_count):
                h = g * (heads // g_count) + hg
                rows = slice(hg * dh, (hg + 1) * dh)
                for i in range(n):
                    logits = []
                    for j in range(m):
                        r = i - positions[j]
                        feature = torch.sign(r) * torch.log1p(r.abs())
                        bias = l2(torch.relu(l1(feature.reshape(1))))[hg]
                        logits.append(qg[rows, i] @ keys[j][rows] / math.sqrt(dh) + bias)
                    weights = torch.softmax(torch.stack(logits), dim=0)
                    out[b, h * dh : (h + 1) * dh, i] = sum(weights[j] * values[j][rows] for j in range(m))
    return module.to_out(out)


@pytest.mark.parametrize(
    "n, heads, offset_groups, s, kernel",
    [(10, 2, None, 4, 6), (7, 4, 2, 2, 4), (5, 2, 1, 4, 4)],
)
def test_deformable_attention_matches_a_naive_implementation(n, heads, offset_groups, s, kernel):
    torch.manual_seed(1)
    module = DeformableAttention1D(
        8, heads=heads, downsample_factor=s, offset_scale=2.0, offset_kernel_size=kernel, offset_groups=offset_groups
    ).double()
    _spread_offsets(module)
    x = torch.randn(2, 8, n, dtype=torch.float64)
    positions = module.sample_positions(module.to_q(x))
    assert (positions != positions.round()).any() and ((positions < 0) | (positions > n - 1)).any()
    with torch.no_grad():
        torch.testing.assert_close(module(x), _naive_deformable_attention(module, x))


# --- offsets --------------------------------------------------------------------------------------------


def test_zero_offsets_sample_the_reference_grid_and_offsets_are_bounded():
    torch.manual_seed(0)
    module = DeformableAttention1D(8, heads=2, downsample_factor=4, offset_scale=2.0, offset_kernel_size=6)
    assert module.to_offset.bias is not None
    with torch.no_grad():
        module.to_offset.weight.zero_()
        module.to_offset.bias.zero_()
    q = module.to_q(torch.randn(3, 8, 10))
    positions = module.sample_positions(q)
    assert positions.shape == (3, 2, 3)  # ceil(10 / 4) keys per group
    torch.testing.assert_close(positions, torch.tensor([1.5, 5.5, 8.5]).expand(3, 2, 3))
    torch.testing.assert_close(reference_positions(64, 4)[:2], torch.tensor([1.5, 5.5]))
    assert reference_positions(3, 4).tolist() == [1.0]

    _spread_offsets(module)
    offsets = module.sample_positions(module.to_q(torch.randn(3, 8, 10))) - torch.tensor([1.5, 5.5, 8.5])
    assert offsets.abs().max() <= 2.0 and offsets.abs().max() > 1.8


# --- gradients and post-norm --------------------------------------------------------------------------


@pytest.mark.parametrize("axis, n_slices", [("slices", None), ("features", 8)])
def test_gradients_reach_every_parameter(axis, n_slices):
    model = _transformer(axis, n_slices=n_slices, layers=2)
    (model(torch.randn(2, 8, 32)) * torch.randn(2, 8, 32)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_every_layer_is_post_norm():
    model = _transformer("slices", layers=2)
    tokens = 3 * torch.randn(2, 8, 32) + 1
    with torch.no_grad():
        for layer in _layers(model):
            middle = layer.norm1(tokens + layer.attend(tokens))
            expected = layer.norm2(middle + layer.ffn(middle))
            tokens = layer(tokens)
            torch.testing.assert_close(tokens, expected)
            torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
            torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)
