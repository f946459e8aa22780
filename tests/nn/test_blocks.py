"""Backbones, heads and attention pooling."""

from __future__ import annotations

import pytest
import torch

from medssl.nn.attention import GatedAttentionPool
from medssl.nn.backbones import build_encoder
from medssl.nn.heads import ProjectionHead, PrototypeHead


@pytest.mark.parametrize(
    "name, dims, channels, shape, out_dim",
    [
        ("resnet18", 2, 3, (2, 3, 64, 64), 512),
        ("resnet18", 2, 1, (2, 1, 64, 64), 512),
        ("resnet18", 3, 1, (2, 1, 32, 32, 32), 512),
        ("resnet50", 2, 3, (2, 3, 64, 64), 2048),
        ("vit_tiny", 2, 3, (2, 3, 64, 64), 192),
        ("vit_tiny", 3, 1, (2, 1, 32, 32, 32), 192),
    ],
)
def test_encoders_give_flat_features_and_gradients(name, dims, channels, shape, out_dim):
    encoder = build_encoder(name, spatial_dims=dims, in_channels=channels, img_size=shape[-1], num_layers=2)
    features = encoder(torch.randn(*shape))
    assert features.shape == (shape[0], out_dim) == (shape[0], encoder.out_dim)
    features.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    rebuilt = build_encoder(**encoder.config())
    rebuilt.load_state_dict(encoder.state_dict())  # the config rebuilds the same architecture


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        build_encoder("resnet7")


def test_heads_shapes_and_unit_prototypes():
    head = ProjectionHead(512, 64, 16, layers=3, last_bn=True)
    assert head(torch.randn(4, 512)).shape == (4, 16)
    prototypes = PrototypeHead(16, 10)
    with torch.no_grad():
        prototypes.prototypes.weight.mul_(3)
    prototypes.normalize_()
    torch.testing.assert_close(prototypes.prototypes.weight.norm(dim=1), torch.ones(10))
    scores = prototypes(torch.randn(4, 16))
    assert scores.shape == (4, 10) and scores.abs().max() <= 1 + 1e-6


def test_gated_attention_by_hand_and_with_padding():
    torch.manual_seed(0)
    pool = GatedAttentionPool(dim=4, hidden_dim=3, heads=1)
    bag = torch.randn(1, 5, 4)
    pooled, attention = pool(bag)
    v, u, w = pool.value[0], pool.gate[0], pool.score
    logits = (torch.tanh(v(bag[0])) * torch.sigmoid(u(bag[0]))) @ w.weight.T + w.bias
    a = torch.softmax(logits[:, 0], dim=0)
    torch.testing.assert_close(attention[0, 0], a)
    torch.testing.assert_close(pooled[0], (a[:, None] * bag[0]).sum(0))
    padded = torch.cat([bag, torch.randn(1, 3, 4) * 100], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    pooled_padded, attention_padded = pool(padded, mask)
    torch.testing.assert_close(pooled_padded, pooled)
    assert attention_padded[0, 0, 5:].sum() == 0
    multi = GatedAttentionPool(dim=4, heads=3)
    out, att = multi(padded, mask)
    assert out.shape == (1, 12) and torch.allclose(att.sum(-1), torch.ones(1, 3))
