"""Segmentation networks on a medssl encoder, 2D or 3D: a U-Net on a ResNet, a UNETR on a ViT, a
SwinUNETR on a SwinUNETR encoder.

All *share* the encoder's modules rather than copying its weights, so whatever fine-tuning does to
them is what ``encoders()`` exports, a frozen encoder stays frozen, and layer-wise learning-rate decay
sees the very parameters that run.

- :class:`ResNetUNet`: the ResNet's multi-scale features (the stem before max-pooling, then layer1 to
  layer4) decoded by MONAI's ``UNetDecoder`` and ``SegmentationHead``, the blocks ``FlexibleUNet`` is
  made of. ``FlexibleUNet`` itself cannot serve: it builds its encoder from a registry by name, with
  torchvision-style channel counts, so neither medssl's width-scaled ResNets (``width``) nor a
  pretrained medssl encoder can be put into it.
- :class:`ViTUNETR`: MONAI's ``UNETR`` decoder (its convolutional skip and up-sampling blocks) on the
  hidden states of the encoder's own ViT, the class token dropped from every state. MONAI's ``UNETR``
  builds a 12-layer ViT of its own and reads hidden states 3, 6 and 9; here the taps sit at a quarter,
  half and three quarters of the encoder's depth (the same 3, 6, 9 for 12 layers), so shortened ViTs work.
- :class:`SwinSegmentation`: a :class:`~medssl.nn.dense_backbones.SwinEncoder` is a whole SwinUNETR
  already (Alice pretrains its decoder too); only the output convolution is new.

Input size: the U-Net takes any size; inside, the input is zero-padded at the end of each axis up to a
multiple of the encoder's total stride (32 with the default stride-2 stem, 16 with a stride-1 stem) and
the logits are cropped back, so the output always has the input's spatial size. The UNETR's ViT has
fixed position embeddings: it takes exactly its ``img_size`` (larger images go through
``sliding_window_inference`` with that window).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medssl.errors import InputError
from medssl.nn.backbones import RESNETS, VITS, Encoder
from medssl.nn.dense_backbones import SwinEncoder
from medssl.nn.inputs import pad_to_multiple

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # FlexibleUNet's


def segmentation_network(
    encoder: Encoder, num_classes: int, decoder_channels: Sequence[int] | None = None, feature_size: int = 16
) -> ResNetUNet | ViTUNETR | SwinSegmentation:
    """The segmentation network for ``encoder``: a U-Net on a ResNet, a UNETR on a ViT, SwinUNETR on
    a SwinUNETR encoder (Alice's)."""
    if isinstance(encoder, SwinEncoder):
        return SwinSegmentation(encoder, num_classes)
    if encoder.name in RESNETS:
        return ResNetUNet(encoder, num_classes, decoder_channels)
    if encoder.name in VITS:
        return ViTUNETR(encoder, num_classes, feature_size)
    raise InputError(f"no segmentation decoder for encoder {encoder.name!r}; use a ResNet, a ViT or swin_unetr")


def _last_norm_channels(module: nn.Module) -> int:
    """Output channels of a ResNet stage: its last BatchNorm's (the block's, or its shortcut's: equal)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise TypeError(f"no normalisation layer in {type(module).__name__} to read its channels from")
    return int(norms[-1].num_features)


class ResNetUNet(nn.Module):
    """A U-Net on a medssl ResNet encoder (2D or 3D), returning logits ``[B, num_classes, *spatial]``.

    Features, shallow to deep: the stem (conv1, bn1, act; before max-pooling), layer1 … layer4.
    With the default stride-2 stem they sit at strides 2 … 32; the decoder's five up-sampling blocks
    take layer3, layer2, layer1 and the stem as skips and the last returns to full resolution, as
    ``FlexibleUNet`` does with its encoders (the input itself is a placeholder, never a skip). A stride-1
    stem gives strides 1 … 16; four blocks then take layer3 … layer1, the last up-sampling to full
    resolution without a skip. ``decoder_channels`` (five, deepest first; a stride-1 stem uses the first
    four) default to FlexibleUNet's ``(256, 128, 64, 32, 16)`` scaled by the encoder's ``width`` (at least 8)."""

    def __init__(self, encoder: Encoder, num_classes: int, decoder_channels: Sequence[int] | None = None):
        super().__init__()
        from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
        from monai.networks.nets.resnet import ResNet

        network = encoder.network
        if not isinstance(network, ResNet):
            raise TypeError(f"ResNetUNet needs a MONAI ResNet encoder, not {type(network).__name__}")
        self.encoder = encoder
        config = encoder.config()
        stem_stride = int(config.get("stem_stride", 2))
        if stem_stride not in (1, 2) or getattr(network, "no_max_pool", False):
            raise InputError(f"ResNetUNet decodes ResNets with a stride-1 or -2 stem and max-pooling, not {config}")
        self.with_input = stem_stride == 2  # strides 1 (input), 2, 4, ..., 32; else 1 (stem), 2, ..., 16
        self.stride = 32 if self.with_input else 16
        stages = [network.layer1, network.layer2, network.layer3, network.layer4]
        channels = [_last_norm_channels(network.bn1), *(_last_norm_channels(s) for s in stages)]
        if self.with_input:
            channels = [encoder.in_channels, *channels]
        if decoder_channels is None:
            width = float(config.get("width", 1.0))
            decoder_channels = [max(8, int(c * width)) for c in DEFAULT_DECODER_CHANNELS]
        decoder_channels = list(decoder_channels)[: len(channels) - 1]
        if len(decoder_channels) != len(channels) - 1:
            raise ValueError(f"decoder_channels needs {len(channels) - 1} entries, got {decoder_channels}")
        dims = encoder.spatial_dims
        self.decoder = UNetDecoder(
            spatial_dims=dims,
            encoder_channels=channels,
            decoder_channels=decoder_channels,
            act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=True,
        )
        self.head = SegmentationHead(dims, decoder_channels[-1], num_classes, kernel_size=3)
        self.num_classes = num_classes

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's inputs, shallow to deep (see the class docstring)."""
        net = self.encoder.network
        stem = net.act(net.bn1(net.conv1(images)))  # pyright: ignore[reportCallIssue]
        x = net.layer1(net.maxpool(stem))  # pyright: ignore[reportCallIssue]
        out = [stem, x]
        for layer in (net.layer2, net.layer3, net.layer4):
            x = layer(x)  # pyright: ignore[reportCallIssue]
            out.append(x)
        return [images, *out] if self.with_input else out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[2:]
        features = self.features(pad_to_multiple(images, self.stride))
        logits = self.head(self.decoder(features, len(features) - 2))
        return logits[(slice(None), slice(None), *(slice(0, s) for s in size))]


class _ViTTokens(nn.Module):
    """A medssl (MONAI) ViT run as UNETR reads it: ``(last state, [hidden state of every block])``,
    each ``[B, tokens, hidden]`` without the class token (which still takes part in attention, as in
    pretraining)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        vit = self.vit
        tokens = vit.patch_embedding(images)  # pyright: ignore[reportCallIssue]
        x = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue]
        hidden = []
        for block in vit.blocks:  # pyright: ignore[reportGeneralTypeIssues]
            x = block(x)
            hidden.append(x[:, 1:])
        return vit.norm(x)[:, 1:], hidden  # pyright: ignore[reportCallIssue]


class ViTUNETR(nn.Module):
    """UNETR (Hatamizadeh et al. 2022) on a medssl ViT encoder: MONAI's ``UNETR`` decoder blocks on the
    encoder's hidden states (taps at a quarter, half and three quarters of its depth). The ViT must cut
    16-pixel patches (the decoder up-samples the token grid 16×) and takes exactly its ``img_size``."""

    def __init__(self, encoder: Encoder, num_classes: int, feature_size: int = 16):
        super().__init__()
        from monai.networks.nets.unetr import UNETR
        from monai.networks.nets.vit import ViT

        network = encoder.network
        if not isinstance(network, ViT):
            raise TypeError(f"ViTUNETR needs a MONAI ViT encoder, not {type(network).__name__}")
        config = encoder.config()
        if int(config["patch_size"]) != 16:
            raise InputError(
                f"UNETR decodes 16-pixel patches; the encoder {config['name']} cuts {config['patch_size']}: "
                "use a ViT with patch_size 16"
            )
        dims = encoder.spatial_dims
        size = config["img_size"]
        self.img_size = (int(size),) * dims if isinstance(size, int) else tuple(int(s) for s in size)
        hidden, _, heads, _ = VITS[config["name"]]
        unetr = UNETR(
            in_channels=encoder.in_channels,
            out_channels=num_classes,
            img_size=self.img_size,
            feature_size=feature_size,
            hidden_size=hidden,
            mlp_dim=hidden * 4,
            num_heads=heads,
            spatial_dims=dims,
        )
        unetr.vit = _ViTTokens(network)  # pyright: ignore[reportAttributeAccessIssue]  (shares the encoder)
        self.unetr = unetr
        self.encoder = encoder
        depth = len(network.blocks)
        self.taps = [max(0, k * depth // 4) for k in (1, 2, 3)]  # 3, 6, 9 for 12 blocks, as UNETR
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[2:]) != self.img_size:
            raise InputError(
                f"the UNETR's ViT takes inputs of exactly {self.img_size}, got {tuple(images.shape[2:])}: "
                "use sliding_window_inference with that window"
            )
        u = self.unetr
        last, hidden = u.vit(images)
        enc1 = u.encoder1(images)
        enc2 = u.encoder2(u.proj_feat(hidden[self.taps[0]]))
        enc3 = u.encoder3(u.proj_feat(hidden[self.taps[1]]))
        enc4 = u.encoder4(u.proj_feat(hidden[self.taps[2]]))
        x = u.decoder5(u.proj_feat(last), enc4)
        x = u.decoder4(x, enc3)
        x = u.decoder3(x, enc2)
        return u.out(u.decoder2(x, enc1))


class SwinSegmentation(nn.Module):
    """MONAI's SwinUNETR for segmentation on a :class:`~medssl.nn.dense_backbones.SwinEncoder`: the
    encoder's own network (shared, so fine-tuning trains what ``encoders()`` exports) with a new output
    convolution to ``num_classes`` in place of the pretraining's reconstruction head. Any input size
    (padded to a multiple of 32 inside, the logits cropped back)."""

    def __init__(self, encoder: SwinEncoder, num_classes: int):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetOutBlock

        self.encoder = encoder
        self.head = UnetOutBlock(spatial_dims=3, in_channels=encoder.feature_size, out_channels=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.decoder_maps(images)[-1])
