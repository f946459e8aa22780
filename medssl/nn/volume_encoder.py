"""A volume encoder made of a 2D encoder applied slice by slice and a transformer across slices: the
joint 2D/3D model of Nguyen et al. (AAAI 2023). f_intra embeds each axial slice (multi-scale pooled,
projected to ``d_model``); f_inter (:class:`~medssl.nn.slice_transformer.SliceTransformer`) lets slices
attend to each other; the volume embedding Z is the unit-normalised mean of its slice tokens.

It is an :class:`~medssl.nn.backbones.Encoder` (``name="slice_stack"``, 3D input ``[B, C, D, H, W]`` →
Z ``[B, d_model]``), so export, ``medssl embed`` and fine-tuning take it like any other encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medssl.nn.backbones import RESNETS, Encoder
from medssl.nn.slice_transformer import SliceTransformer


def multiscale_dims(encoder: Encoder, pooling: str) -> int:
    """Feature size of :func:`pooled_slice_features`: every ResNet stage's channels plus the final pool."""
    if pooling == "final":
        return encoder.out_dim
    width, expansion = encoder.config()["width"], 4 if encoder.name == "resnet50" else 1
    return sum(int(c * width) * expansion for c in (64, 128, 256, 512)) + encoder.out_dim


def pooled_slice_features(encoder: Encoder, images: torch.Tensor, pooling: str = "multiscale") -> torch.Tensor:
    """``[n, F]`` features of 2D images. ``"multiscale"`` (the paper's f_intra): the global average of each
    ResNet stage and the network's final pool, each L2-normalised, concatenated, so shallow texture and
    deep shape both reach the slice embedding (for a ResNet the final pool equals the last stage's
    average; it is kept as the reference keeps it, 5,888 features for a ResNet-50). ``"final"``: the
    encoder's own features (any encoder, ViTs included)."""
    if pooling == "final":
        return encoder(images)
    if pooling != "multiscale":
        raise ValueError(f"pooling must be 'multiscale' or 'final', got {pooling!r}")
    if encoder.name not in RESNETS:
        raise ValueError(f"multi-scale pooling needs a ResNet's stages, not {encoder.name!r}; use pooling='final'")
    net = encoder.network
    x = net.maxpool(net.act(net.bn1(net.conv1(images))))  # pyright: ignore[reportCallIssue]  (MONAI ResNet)
    pooled = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)  # pyright: ignore[reportCallIssue]
        pooled.append(F.normalize(x.mean(dim=(2, 3)), dim=1))
    pooled.append(F.normalize(net.avgpool(x).flatten(1), dim=1))  # pyright: ignore[reportCallIssue]
    return torch.cat(pooled, dim=1)


class SliceStack(nn.Module):
    """f_intra (``slice_encoder`` + ``projection``) and f_inter (``transformer``)."""

    def __init__(self, slice_encoder: Encoder, d_model: int, transformer: SliceTransformer, pooling: str):
        super().__init__()
        self.slice_encoder, self.transformer, self.pooling = slice_encoder, transformer, pooling
        self.projection = nn.Linear(multiscale_dims(slice_encoder, pooling), d_model)

    def slice_embeddings(self, volumes: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """X ``[B, D, d_model]``: each axial slice of ``[B, C, D, H, W]`` through f_intra, ``chunk``
        slices at a time (None: all in one batch)."""
        b, c, d, h, w = volumes.shape
        slices = volumes.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        if chunk is None:  # one batch, no loop over sizes (torch.export keeps the batch dynamic)
            pooled = pooled_slice_features(self.slice_encoder, slices, self.pooling)
        else:
            parts = range(0, len(slices), chunk)
            pooled = torch.cat(
                [pooled_slice_features(self.slice_encoder, slices[i : i + chunk], self.pooling) for i in parts]
            )
        return self.projection(pooled).reshape(b, d, -1)

    def tokens_and_volume(self, volumes: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """f_inter's slice tokens ``[B, D, d_model]`` and Z ``[B, d_model]`` (what ``medssl embed`` writes)."""
        tokens = self.transformer(self.slice_embeddings(volumes, chunk))
        return tokens, self.volume_embedding(tokens)

    @staticmethod
    def volume_embedding(tokens: torch.Tensor) -> torch.Tensor:
        """Z: the unit-normalised mean of slice tokens ``[B, D, d]``."""
        return F.normalize(tokens.mean(dim=1), dim=1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.volume_embedding(self.transformer(self.slice_embeddings(volumes)))


def build_slice_stack(
    slice_encoder: Encoder, d_model: int = 640, transformer: dict | None = None, pooling: str = "multiscale"
) -> Encoder:
    """The volume encoder around a 2D ``slice_encoder`` (shared, not copied: training one trains the
    other). ``transformer``: :class:`SliceTransformer` arguments besides ``d_model``."""
    if slice_encoder.spatial_dims != 2:
        raise ValueError(f"the slice encoder must be 2D, got a {slice_encoder.spatial_dims}D {slice_encoder.name}")
    blocks = SliceTransformer(d_model=d_model, **(transformer or {}))
    network = SliceStack(slice_encoder, d_model, blocks, pooling)
    config = dict(
        name="slice_stack",
        spatial_dims=3,
        in_channels=slice_encoder.in_channels,
        slice_encoder=slice_encoder.config(),
        d_model=d_model,
        transformer={k: v for k, v in blocks.config().items() if k != "d_model"},
        pooling=pooling,
    )
    return Encoder(network, d_model, config)
