"""Encoders from MONAI for 2D and 3D, grey-level or RGB: every one maps an image batch to ``[B, D]``
features and says its ``out_dim``; methods add their own heads on top."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

RESNETS = ("resnet18", "resnet34", "resnet50")
VITS = {  # name: (hidden size, MLP size, heads, layers)
    "vit_tiny": (192, 768, 3, 12),
    "vit_small": (384, 1536, 6, 12),
    "vit_base": (768, 3072, 12, 12),
}


class Encoder(nn.Module):
    """A backbone with its feature size; ``forward`` returns ``[B, out_dim]``."""

    def __init__(self, network: nn.Module, out_dim: int, config: dict):
        super().__init__()
        self.network, self.out_dim, self._config = network, out_dim, dict(config)
        self.name, self.spatial_dims, self.in_channels = config["name"], config["spatial_dims"], config["in_channels"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.network(images)
        return features[0] if isinstance(features, tuple) else features

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled [B, D], feature map [B, D, *grid])``: a ResNet's last stage before pooling, or a
        ViT's patch tokens on their grid (pooled is then the class token), for methods with local costs."""
        from monai.networks.nets.resnet import ResNet
        from monai.networks.nets.vit import ViT

        net = self.network
        if self.name in RESNETS:
            if not isinstance(net, ResNet):
                raise TypeError(f"encoder {self.name!r} should wrap a MONAI ResNet, not {type(net).__name__}")
            x = net.maxpool(net.act(net.bn1(net.conv1(images))))
            fmap = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            return net.avgpool(fmap).flatten(1), fmap
        if not isinstance(net, ViT):
            raise TypeError(f"encoder {self.name!r} should wrap a MONAI ViT, not {type(net).__name__}")
        tokens = net.patch_embedding(images)
        cls = net.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in net.blocks:
            x = block(x)
        x = net.norm(x)
        grid = [s // self._config["patch_size"] for s in images.shape[2:]]
        return x[:, 0], x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)

    def stages(self) -> list[nn.Module]:
        """The network's parameters in depth order, input first: a ResNet's stem and its four layers; a
        ViT's patch embedding (with the class token), each transformer block and the final norm. The
        unit of layer-wise learning-rate decay and of a U-Net's skip connections."""
        from monai.networks.nets.resnet import ResNet
        from monai.networks.nets.vit import ViT

        net = self.network
        if self.name in RESNETS and isinstance(net, ResNet):
            return [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
        if self.name in VITS and isinstance(net, ViT):
            return [_Stage(net.patch_embedding, net.cls_token), *net.blocks, net.norm]
        raise TypeError(f"no stage order for encoder {self.name!r} ({type(net).__name__})")

    def config(self) -> dict:
        """What :func:`build_encoder` needs to rebuild this encoder (stored with exported weights)."""
        return dict(self._config)


class _Stage(nn.Module):
    """A module and loose parameters (a ViT's class token) grouped as one stage, without registering
    them again (a plain list: the encoder's ``named_parameters`` stay as they are)."""

    def __init__(self, module: nn.Module, *parameters: nn.Parameter):
        super().__init__()
        self._members = [module, *parameters]

    def parameters(self, recurse: bool = True):  # noqa: ARG002  (nn.Module.parameters' signature)
        for member in self._members:
            if isinstance(member, nn.Parameter):
                yield member
            else:
                yield from member.parameters()


def build_encoder(
    name: str = "resnet18",
    spatial_dims: int = 2,
    in_channels: int = 3,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    num_layers: int | None = None,
    stem_stride: int = 2,
    width: float = 1.0,
    slice_encoder: dict | None = None,
    d_model: int = 640,
    transformer: dict | None = None,
    pooling: str = "multiscale",
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    use_checkpoint: bool = False,
) -> Encoder:
    """A MONAI ResNet (``resnet18|34|50``, global-average-pooled features) or ViT (``vit_tiny|small|base``,
    the class token) for ``spatial_dims`` 2 or 3 and ``in_channels`` (1 for CT/MR, 3 for histology).
    ``num_layers`` shortens a ViT (for tests and small data). ``stem_stride`` is the ResNet's first
    convolution stride: 2 as in the ResNets the SSL papers use (MONAI's own default, 1, costs 4× the
    compute at the same input size); a MONAI network rebuilt from exported weights needs
    ``conv1_t_stride`` set to it. ``width`` scales a ResNet's channels (MONAI's ``widen_factor``; 0.25 for
    tests and small cohorts on CPU).

    ``name="slice_stack"`` builds the joint 2D/3D volume encoder
    (:func:`~medssl.nn.volume_encoder.build_slice_stack`) around the 2D encoder ``slice_encoder`` (its
    ``build_encoder`` arguments) with ``d_model``, ``transformer`` and ``pooling``.

    ``name="swin_unetr"`` builds MONAI's SwinUNETR as a 3D encoder with dense outputs (Alice's backbone,
    :func:`~medssl.nn.dense_backbones.build_swin_encoder`) from ``feature_size``, ``depths``,
    ``num_heads``, ``window_size`` and ``use_checkpoint``."""
    if name == "swin_unetr":
        from medssl.nn.dense_backbones import build_swin_encoder

        if spatial_dims != 3:
            raise ValueError(f"swin_unetr is a 3D network; spatial_dims must be 3, got {spatial_dims}")
        return build_swin_encoder(in_channels, feature_size, depths, num_heads, window_size, use_checkpoint)
    if name == "slice_stack":
        from medssl.nn.volume_encoder import build_slice_stack

        inner = build_encoder(**(slice_encoder or {"spatial_dims": 2, "in_channels": in_channels}))
        return build_slice_stack(inner, d_model, transformer, pooling)
    from monai.networks import nets
    from monai.networks.nets.vit import ViT  # the package's __init__ does not re-export it to type checkers

    config = dict(
        name=name,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        img_size=img_size,
        patch_size=patch_size,
        num_layers=num_layers,
        stem_stride=stem_stride,
        width=width,
    )
    if name in RESNETS:
        network = getattr(nets, name)(
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            feed_forward=False,
            conv1_t_stride=stem_stride,
            widen_factor=width,
        )
        out_dim = int(512 * width) * (4 if name == "resnet50" else 1)
    elif name in VITS:
        hidden, mlp, heads, layers = VITS[name]
        size = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
        network = ViT(
            in_channels=in_channels,
            img_size=size,
            patch_size=(patch_size,) * spatial_dims,
            hidden_size=hidden,
            mlp_dim=mlp,
            num_heads=heads,
            num_layers=num_layers or layers,
            spatial_dims=spatial_dims,
            classification=True,
        )
        # keep the class token's features; MONAI leaves the head's type to be inferred from its own
        # assignments (Sequential | Linear), though forward only calls it, so any Module serves
        network.classification_head = nn.Identity()  # pyright: ignore[reportAttributeAccessIssue]
        out_dim = hidden
    else:
        names = [*sorted(RESNETS), *sorted(VITS), "slice_stack", "swin_unetr"]
        raise ValueError(f"unknown backbone {name!r}; choose from {names}")
    return Encoder(network, out_dim, config)
