"""MONAI's SwinUNETR as a medssl 3D encoder that also gives dense features: Alice's backbone.

:class:`SwinEncoder` is an :class:`~medssl.nn.backbones.Encoder` (``name="swin_unetr"``) whose
``network`` is a plain MONAI ``SwinUNETR``, so everything that takes an encoder takes it (export,
``medssl embed``, fine-tuning) and its weights load into a MONAI ``SwinUNETR`` for segmentation with
only the output convolution new. It reads the network at every decoder depth
(:meth:`SwinEncoder.decoder_maps`); Alice's three readings (:meth:`SwinEncoder.dense`), the 3D
segmentation network (:class:`~medssl.nn.decoders.SwinSegmentation`) and the dense embeddings of
``medssl embed --dense`` (:meth:`SwinEncoder.dense_maps`) are all taken from there.

Input: ``[B, C, D, H, W]``. SwinUNETR halves every side five times, so inside, the input is
zero-padded at the end of each axis up to a multiple of 32 and every map is cropped back to the
input's extent at its own stride (``ceil(side / stride)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medssl.nn.backbones import Encoder
from medssl.nn.inputs import pad_to_multiple

if TYPE_CHECKING:
    from monai.networks.nets.swin_unetr import SwinUNETR

SWIN_STRIDES = (32, 16, 8, 4, 2, 1)  # of decoder_maps(), deepest first
DENSE_LEVELS = {"coarse": 16, "fine": 4}  # the two maps medssl embed --dense stores, by stride


class SwinEncoder(Encoder):
    """A MONAI ``SwinUNETR`` (``network``; its ``out`` convolution maps back to the input's channels, the
    target of a reconstruction loss). ``forward``: the bottleneck's average ``[B, 16·feature_size]``."""

    #: the stride (voxels per cell, every axis) of each map :meth:`dense_maps` returns; what an encoder
    #: needs besides ``dense_maps`` for ``medssl embed --dense``
    dense_strides: dict[str, int] = DENSE_LEVELS

    def __init__(self, network: nn.Module, config: dict):
        super().__init__(network, 16 * int(config["feature_size"]), config)
        feature_size = int(config["feature_size"])
        self.encoder_dim, self.decoder_dim, self.feature_size = 16 * feature_size, 8 * feature_size, feature_size

    @property
    def swin(self) -> SwinUNETR:
        """``network``, typed."""
        from monai.networks.nets.swin_unetr import SwinUNETR

        if not isinstance(self.network, SwinUNETR):
            raise TypeError(f"a SwinEncoder wraps a MONAI SwinUNETR, not {type(self.network).__name__}")
        return self.network

    def decoder_maps(self, images: torch.Tensor, finest: int = 1) -> list[torch.Tensor]:
        """The bottleneck and each decoder stage's output, deepest first, at strides 32, 16, 8, 4, 2, 1
        with 16, 8, 4, 2, 1, 1 × ``feature_size`` channels (the last is what ``out`` reads), each
        cropped to the input's extent at its stride. ``finest``: stop after the stage at this stride
        (4 skips the two full- and half-resolution stages and their skip convolutions, most of the
        cost on a whole volume)."""
        net = self.swin
        spatial = images.shape[2:]
        padded = pad_to_multiple(images, 32)
        hidden = net.swinViT(padded, net.normalize)
        maps = [net.encoder10(hidden[4])]
        maps.append(net.decoder5(maps[-1], hidden[3]))
        stages = (
            (net.decoder4, lambda: net.encoder4(hidden[2])),
            (net.decoder3, lambda: net.encoder3(hidden[1])),
            (net.decoder2, lambda: net.encoder2(hidden[0])),
            (net.decoder1, lambda: net.encoder1(padded)),
        )
        for stride, (decoder, skip) in zip(SWIN_STRIDES[2:], stages, strict=True):
            if stride < finest:
                break
            maps.append(decoder(maps[-1], skip()))
        return [_crop(m, spatial, stride) for m, stride in zip(maps, SWIN_STRIDES)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bottleneck average [B, 16·fs], bottleneck [B, 16·fs, D/32, H/32, W/32])``."""
        net = self.swin
        padded = pad_to_multiple(images, 32)
        bottleneck = _crop(net.encoder10(net.swinViT(padded, net.normalize)[4]), images.shape[2:], 32)
        return bottleneck.mean(dim=(2, 3, 4)), bottleneck

    def dense(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Alice's readings:

        - ``global``: the bottleneck's average ``[B, 16·fs]``;
        - ``encoder_tokens``: the bottleneck (stride 32) as tokens ``[B, N_enc, 16·fs]`` (8 for 64³, 27 for 96³);
        - ``decoder_tokens``: the first decoder stage (stride 16) as tokens ``[B, N_dec, 8·fs]`` (64 for
          64³, 216 for 96³);
        - ``reconstruction``: the network's output ``[B, C, D, H, W]``.

        Alice's nnFormer read its tokens at 1/16 and 1/8; SwinUNETR's stages sit one level deeper."""
        maps = self.decoder_maps(images)
        return {
            "global": maps[0].mean(dim=(2, 3, 4)),
            "encoder_tokens": maps[0].flatten(2).transpose(1, 2),
            "decoder_tokens": maps[1].flatten(2).transpose(1, 2),
            "reconstruction": self.swin.out(maps[-1]),
        }

    def dense_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The dense embeddings of ``medssl embed --dense``: ``coarse`` (stride 16, 8·fs channels) and
        ``fine`` (stride 4, 2·fs channels) decoder maps, each L2-normalised over channels, the
        coarse-and-fine pair self-supervised anatomical embeddings use to match voxels across patients."""
        maps: dict[int, torch.Tensor] = dict(
            zip(SWIN_STRIDES, self.decoder_maps(images, finest=min(DENSE_LEVELS.values())))
        )
        return {name: F.normalize(maps[stride], dim=1) for name, stride in DENSE_LEVELS.items()}

    def stages(self) -> list[nn.Module]:
        """Depth order for layer-wise decay: patch embedding with the full-resolution convolutions, then
        each Swin stage with the encoder block reading it; the decoder (nearest the task) last."""
        net = self.swin
        vit = net.swinViT
        stages: list[nn.Module] = [
            nn.ModuleList([vit.patch_embed, net.encoder1, net.encoder2]),
            nn.ModuleList([vit.layers1, net.encoder3]),
            nn.ModuleList([vit.layers2, net.encoder4]),
            nn.ModuleList([vit.layers3]),
            nn.ModuleList([vit.layers4, net.encoder10]),
            nn.ModuleList([net.decoder5, net.decoder4, net.decoder3, net.decoder2, net.decoder1, net.out]),
        ]
        return stages


def _crop(feature_map: torch.Tensor, spatial: Sequence[int], stride: int) -> torch.Tensor:
    """``feature_map`` cropped to ``ceil(side / stride)`` along each spatial axis."""
    return feature_map[(..., *(slice(0, math.ceil(s / stride)) for s in spatial))]


def build_swin_encoder(
    in_channels: int = 1,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    use_checkpoint: bool = False,
) -> SwinEncoder:
    """A :class:`SwinEncoder` on ``SwinUNETR(in_channels, out_channels=in_channels, ...)`` (MONAI's
    arguments; ``feature_size`` a multiple of 12; ``use_checkpoint`` trades compute for memory)."""
    from monai.networks.nets.swin_unetr import SwinUNETR

    network = SwinUNETR(
        in_channels=in_channels,
        out_channels=in_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        use_checkpoint=use_checkpoint,
    )
    config = dict(
        name="swin_unetr",
        spatial_dims=3,
        in_channels=in_channels,
        feature_size=feature_size,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=window_size,
        use_checkpoint=use_checkpoint,
    )
    return SwinEncoder(network, config)
