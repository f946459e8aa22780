"""Alice's blocks: the iBOT-style token distillation head and the CASA cross-attention alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.nn.cross_attention import CrossAttentionAlignment
from medssl.nn.heads import TokenDistillationHead


def _tiny_head(**overrides) -> TokenDistillationHead:
    options = dict(encoder_dim=6, decoder_dim=4, out_dim=7, patch_out_dim=5, hidden_dim=8, bottleneck_dim=3)
    return TokenDistillationHead(**{**options, **overrides})


@pytest.mark.parametrize("layers", [1, 3])
def test_head_shapes_and_unit_norm_last_layers(layers):
    torch.manual_seed(0)
    head = _tiny_head(layers=layers)
    global_logits, encoder_logits, decoder_logits = head(torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(2, 9, 4))
    assert global_logits.shape == (2, 7)
    assert encoder_logits.shape == (2, 4, 5) and decoder_logits.shape == (2, 9, 5)
    for last in (head.global_last, head.token_last):
        with torch.no_grad():  # a trained direction has any norm; the effective rows must stay unit vectors
            last.get_parameter("parametrizations.weight.original1").mul_(torch.rand(last.out_features, 1) * 5 + 0.1)
        torch.testing.assert_close(last.weight.norm(dim=1), torch.ones(last.out_features))
        assert last.bias is None
    bottleneck = head.embed(torch.randn(2, 5, 6) * 10)
    torch.testing.assert_close(bottleneck.norm(dim=-1), torch.ones(2, 5))
    # logits are cosines between the unit bottleneck and unit rows, so they lie in [-1, 1]
    assert global_logits.abs().max() <= 1 + 1e-6 and decoder_logits.abs().max() <= 1 + 1e-6


def test_head_routes_each_input_through_its_projection_and_last_layer():
    torch.manual_seed(0)
    head = _tiny_head(in_dim=10)
    global_token, encoder_tokens, decoder_tokens = torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(2, 3, 4)
    global_logits, encoder_logits, decoder_logits = head(global_token, encoder_tokens, decoder_tokens)
    expected_global = F.linear(head.embed(head.encoder_projection(global_token)), head.global_last.weight)
    expected_encoder = F.linear(head.embed(head.encoder_projection(encoder_tokens)), head.token_last.weight)
    expected_decoder = F.linear(head.embed(head.decoder_projection(decoder_tokens)), head.token_last.weight)
    torch.testing.assert_close(global_logits, expected_global)
    torch.testing.assert_close(encoder_logits, expected_encoder)
    torch.testing.assert_close(decoder_logits, expected_decoder)


def test_last_layers_are_exactly_the_output_layers_and_freezing_keeps_mlp_gradients():
    torch.manual_seed(0)
    head = _tiny_head()
    last_ids = {id(p) for p in head.last_layers()}
    expected = {id(p) for m in (head.global_last, head.token_last) for p in m.parameters()}
    assert last_ids == expected and len(head.last_layers()) == 4  # direction v and fixed norm g, per layer
    assert not any(p.requires_grad for n, p in head.named_parameters() if n.endswith("original0"))
    outputs = head(torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(2, 3, 4))
    torch.stack([o.pow(2).sum() for o in outputs]).sum().backward()
    trainable_last = [p for p in head.last_layers() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_last)
    for p in head.last_layers():  # what a method does during the first epoch
        p.grad = None
    assert all(p.grad is None for p in head.last_layers())
    others = [p for p in head.parameters() if id(p) not in last_ids]
    assert others and all(p.grad is not None and p.grad.abs().sum() > 0 for p in others)


def test_head_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        _tiny_head(layers=0)


def _casa(dim: int = 8, heads: int = 2) -> CrossAttentionAlignment:
    torch.manual_seed(0)
    return CrossAttentionAlignment(dim, heads=heads).eval()


def test_casa_shape_and_post_norm():
    casa = _casa()
    out = casa(torch.randn(3, 5, 8) * 4 + 2, torch.randn(3, 7, 8))
    assert out.shape == (3, 5, 8)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(3, 5), atol=1e-3, rtol=0)


def test_casa_queries_do_not_mix_and_context_is_an_unordered_set():
    casa = _casa()
    queries, context = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    out = casa(queries, context)
    other_queries = queries.clone()
    other_queries[0, 1:] = torch.randn(3, 8)
    torch.testing.assert_close(casa(other_queries, context)[0, 0], out[0, 0])
    assert not torch.allclose(casa(queries, torch.randn(1, 6, 8))[0, 0], out[0, 0])
    torch.testing.assert_close(casa(queries, context[:, torch.randperm(6)]), out)


def test_casa_masked_context_equals_dropped_context():
    casa = _casa()
    queries, context = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    mask = torch.tensor([[True, True, False, True, False, True]])
    torch.testing.assert_close(casa(queries, context, mask), casa(queries, context[:, mask[0]]))


def test_casa_matches_a_hand_computation():
    dim, heads = 8, 2
    casa = _casa(dim, heads)
    queries, context = torch.randn(4, dim), torch.randn(6, dim)
    w_q, w_k, w_v = casa.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = casa.attention.in_proj_bias.chunk(3)
    q, k, v = queries @ w_q.T + b_q, context @ w_k.T + b_k, context @ w_v.T + b_v
    head_dim = dim // heads
    per_head = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[:, cols] @ k[:, cols].T / math.sqrt(head_dim), dim=-1)
        per_head.append(weights @ v[:, cols])
    attended = torch.cat(per_head, dim=-1) @ casa.attention.out_proj.weight.T + casa.attention.out_proj.bias
    x = F.layer_norm(queries + attended, (dim,), casa.attention_norm.weight, casa.attention_norm.bias)
    expected = F.layer_norm(x + casa.ffn(x), (dim,), casa.ffn_norm.weight, casa.ffn_norm.bias)
    torch.testing.assert_close(casa(queries[None], context[None])[0], expected)
