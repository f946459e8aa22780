"""Heads that SSL methods put on an encoder: MLP projectors and prototype layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``layers`` linear layers with BatchNorm and ReLU between them (SimCLR/Barlow Twins projectors);
    ``last_bn`` adds an affine-free BatchNorm at the output, as Barlow Twins and MoCo v3 do;
    ``batch_norm=False`` leaves the hidden BatchNorms out (MoCo v2's and PiCO/INS's heads)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        layers: int = 2,
        last_bn: bool = False,
        batch_norm: bool = True,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            blocks += [nn.Linear(dim, hidden_dim, bias=not batch_norm), *norm, nn.ReLU(inplace=True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PrototypeHead(nn.Module):
    """Cosine scores against ``n_prototypes`` unit vectors (SwAV, DeepCluster-v2, INS class prototypes).
    Call :meth:`normalize_` after each optimiser step to keep prototypes on the sphere."""

    def __init__(self, dim: int, n_prototypes: int):
        super().__init__()
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(x, dim=1))


def _gelu_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with GELU between them, truncated-normal init as DINO/iBOT use."""
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    blocks: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            blocks.append(nn.GELU())
        linear = nn.Linear(d_in, d_out)
        nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
        blocks.append(linear)
    return nn.Sequential(*blocks)


def _unit_norm_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """Bias-free weight-normalised layer whose norm ``g`` is fixed to 1: every row of the effective weight is a
    unit vector, so logits are cosines; DINO does this to keep the last layer from collapsing early."""
    layer = nn.Linear(in_dim, out_dim, bias=False)
    nn.utils.parametrizations.weight_norm(layer, dim=0)  # registers the parametrisation in place
    magnitude = layer.get_parameter("parametrizations.weight.original0")
    with torch.no_grad():
        magnitude.fill_(1.0)
    magnitude.requires_grad_(False)
    return layer


class TokenDistillationHead(nn.Module):
    """iBOT-style head on a 3D encoder-decoder's outputs (Alice's ``AliceHead``, Jiang et al. 2023).

    Encoder tokens (and the global token) and decoder tokens have their own linear projection to ``in_dim``
    (default ``encoder_dim``), then share one GELU MLP to a ``bottleneck_dim`` that is L2-normalised, then a
    weight-normalised bias-free last layer: ``global_last`` (``out_dim``) for the global token and
    ``token_last`` (``patch_out_dim``) shared by encoder and decoder tokens. Freeze :meth:`last_layers` in the
    first epoch as DINO/iBOT do.
    """

    def __init__(
        self,
        encoder_dim: int,
        decoder_dim: int,
        in_dim: int | None = None,
        out_dim: int = 512,
        patch_out_dim: int = 512,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the MLP needs at least one layer, got layers={layers}")
        in_dim = encoder_dim if in_dim is None else in_dim
        self.encoder_projection = nn.Linear(encoder_dim, in_dim)
        self.decoder_projection = nn.Linear(decoder_dim, in_dim)
        self.mlp = _gelu_mlp(in_dim, hidden_dim, bottleneck_dim, layers)
        self.global_last = _unit_norm_linear(bottleneck_dim, out_dim)
        self.token_last = _unit_norm_linear(bottleneck_dim, patch_out_dim)

    def embed(self, projected: torch.Tensor) -> torch.Tensor:
        """Unit-norm bottleneck features of already projected ``[..., in_dim]`` inputs."""
        return F.normalize(self.mlp(projected), dim=-1)

    def forward(
        self, global_token: torch.Tensor, encoder_tokens: torch.Tensor, decoder_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, C_enc]``, ``[B, N_enc, C_enc]``, ``[B, N_dec, C_dec]`` → global logits ``[B, out_dim]``,
        encoder-token and decoder-token logits ``[B, N, patch_out_dim]``. One MLP pass over all tokens."""
        n_enc = encoder_tokens.shape[1]
        encoder_side = self.encoder_projection(torch.cat([global_token[:, None], encoder_tokens], dim=1))
        tokens = torch.cat([encoder_side, self.decoder_projection(decoder_tokens)], dim=1)
        bottleneck = self.embed(tokens)
        global_logits = self.global_last(bottleneck[:, 0])
        token_logits = self.token_last(bottleneck[:, 1:])
        return global_logits, token_logits[:, :n_enc], token_logits[:, n_enc:]

    def last_layers(self) -> list[nn.Parameter]:
        """Parameters of the two weight-normalised output layers (the ones DINO freezes in epoch one)."""
        return [*self.global_last.parameters(), *self.token_last.parameters()]
