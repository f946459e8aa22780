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


def test_knn_adjacency_and_gcn_by_hand():
    from medssl.nn.graph import GCN, edge_list, knn_adjacency, normalized_adjacency

    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    a = knn_adjacency(points, k=1)
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(a, expected)
    assert edge_list(a).tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    assert torch.equal(knn_adjacency(torch.stack([points, points.flip(0)]), k=1)[1], expected.flip(0, 1))
    # Â for a single edge: (A + I) has degree 2 on both nodes → every entry 1/2
    torch.testing.assert_close(normalized_adjacency(torch.tensor([[0.0, 1.0], [1.0, 0.0]])), torch.full((2, 2), 0.5))
    gcn = GCN(2, dim=3, layers=2, residual=False)
    h = torch.randn(4, 2)
    w0, b0, w1, b1 = gcn.linears[0].weight, gcn.linears[0].bias, gcn.linears[1].weight, gcn.linears[1].bias
    propagate = normalized_adjacency(a)
    by_hand = propagate @ (torch.relu(propagate @ (h @ w0.T + b0)) @ w1.T + b1)
    torch.testing.assert_close(gcn(h, a), by_hand)
    # message passing only mixes neighbours: the two components do not exchange information
    moved = h.clone()
    moved[2:] += 5.0
    torch.testing.assert_close(gcn(moved, a)[:2], gcn(h, a)[:2])
    residual = GCN(3, dim=3, layers=2)
    h3 = torch.randn(4, 3)
    first = h3 + torch.relu(propagate @ residual.linears[0](h3))
    torch.testing.assert_close(residual(h3, a), first + propagate @ residual.linears[1](first))


@pytest.mark.parametrize(
    "config, grid",
    [
        ({"name": "resnet18", "width": 0.25}, (2, 2)),
        ({"name": "vit_tiny", "img_size": 64, "patch_size": 16, "num_layers": 1}, (4, 4)),
        ({"name": "resnet18", "spatial_dims": 3, "in_channels": 1, "width": 0.25}, (2, 2, 2)),
    ],
)
def test_feature_maps_pool_to_the_encoder_output(config, grid):
    from medssl.nn.backbones import build_encoder

    encoder = build_encoder(**config).eval()
    images = torch.rand(2, encoder.in_channels, *([64] * encoder.spatial_dims))
    pooled, fmap = encoder.forward_features(images)
    assert fmap.shape == (2, encoder.out_dim, *grid)
    torch.testing.assert_close(pooled, encoder(images))
