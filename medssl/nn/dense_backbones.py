"""Encoder-decoders that give dense 3D features for self-distillation (Alice): MONAI's SwinUNETR, read
at three depths. Its weights are SwinUNETR's own, so a pretrained network loads into a MONAI SwinUNETR
for segmentation with only the output convolution new."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DenseSwinBackbone(nn.Module):
    """MONAI SwinUNETR (``network``) returning, for an input ``[B, C, D, H, W]`` (each side a multiple of 32):

    - ``global``: the bottleneck's average ``[B, 16·feature_size]``;
    - ``encoder_tokens``: the bottleneck (1/32 of each side) as tokens ``[B, N_enc, 16·feature_size]``
      (8 tokens for a 64³ crop, 27 for 96³);
    - ``decoder_tokens``: the first decoder stage (1/16) as tokens ``[B, N_dec, 8·feature_size]`` (64 for
      64³, 216 for 96³);
    - ``reconstruction``: the full-resolution output ``[B, out_channels, D, H, W]`` (the masked-image
      target of a reconstruction loss).

    Alice's nnFormer read its tokens at 1/16 and 1/8; SwinUNETR's stages sit one level deeper."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinUNETR

        self.network = SwinUNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            use_checkpoint=use_checkpoint,
        )
        self.global_dim, self.encoder_dim, self.decoder_dim = 16 * feature_size, 16 * feature_size, 8 * feature_size

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.network
        hidden = net.swinViT(images, net.normalize)
        bottleneck = net.encoder10(hidden[4])
        first_decoder = net.decoder5(bottleneck, hidden[3])
        skips = [net.encoder1(images), net.encoder2(hidden[0]), net.encoder3(hidden[1]), net.encoder4(hidden[2])]
        x = first_decoder
        for decoder, skip in zip((net.decoder4, net.decoder3, net.decoder2, net.decoder1), reversed(skips)):
            x = decoder(x, skip)
        return {
            "global": bottleneck.mean(dim=(2, 3, 4)),
            "encoder_tokens": bottleneck.flatten(2).transpose(1, 2),
            "decoder_tokens": first_decoder.flatten(2).transpose(1, 2),
            "reconstruction": net.out(x),
        }
