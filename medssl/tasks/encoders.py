"""Encoders for downstream tasks: where they come from, whether they fit the task's data, how their
input channels are adapted, and how they are trained (frozen, full, layer-wise learning-rate decay).

Every source goes through the methods' encoder contract (:func:`~medssl.export.encoders.encoder_source`),
so any method's encoder works without special cases:

- a medssl Lightning checkpoint (its encoder ``encoder_name``, ``"encoder"`` by default),
- an ``encoder.pt`` file from ``medssl export`` / ``medssl embed``,
- nothing: a randomly initialised ``backbone`` (the control), or ``random_init=True`` with a file,
  which keeps the file's architecture and drops its weights (the fairest control).

A mismatch between encoder and data is refused before training, naming both sides; adapting the input
channels is an explicit option (:class:`ChannelAdapter`), never silent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from medssl.errors import InputError
from medssl.export.encoders import build_from_source, encoder_source
from medssl.nn.backbones import VITS, Encoder, build_encoder

ChannelMode = Literal["none", "repeat", "conv1x1"]
FinetuneMode = Literal["frozen", "full", "llrd"]


def task_encoder(
    encoder: str | os.PathLike | None = None,
    backbone: dict | None = None,
    encoder_name: str = "encoder",
    random_init: bool = False,
) -> tuple[Encoder, str]:
    """(the encoder, where it came from: ``"random initialisation"``, the file, or both, for messages
    and results).

    ``encoder``: a checkpoint or encoder file; None builds ``backbone`` (a
    :func:`~medssl.nn.backbones.build_encoder` config) with random weights. ``random_init`` keeps the
    file's architecture and re-initialises it. Giving both a file and a ``backbone`` is refused: the
    file says what the encoder is."""
    if encoder is None:
        if not backbone:
            raise InputError("a task needs an encoder: set encoder (a checkpoint or encoder.pt) or backbone")
        return build_encoder(**backbone), "random initialisation"
    if backbone:
        raise InputError(
            f"encoder {encoder} and backbone {backbone} both given: the encoder file defines the architecture; "
            "drop backbone (or drop encoder for a randomly initialised backbone)"
        )
    source = encoder_source(encoder, encoder_name)
    if random_init:
        return build_encoder(**source["config"]), f"random initialisation (architecture of {encoder})"
    return build_from_source(source, encoder), str(encoder)


def describe(config: dict) -> str:
    """'a 2D resnet18 with 3 input channels' (and the ViT input size), for messages."""
    text = f"a {config['spatial_dims']}D {config['name']} with {config['in_channels']} input channels"
    if config["name"] in VITS:
        text += f", input {config['img_size']} in patches of {config['patch_size']}"
    return text


def check_fits(
    config: dict, image_shape: Sequence[int], channel_adapter: ChannelMode, data: str, encoder: str = "the encoder"
) -> None:
    """Refuse, before training, data the encoder cannot take: ``image_shape`` is one sample's ``[C, *spatial]``
    as the task's data deliver it (``data`` names them). Checks the number of spatial axes, the channels
    (unless ``channel_adapter`` adapts them) and, for a ViT, that the input size equals its fixed
    ``img_size`` and that the patch size divides every axis."""
    channels, spatial = int(image_shape[0]), tuple(int(s) for s in image_shape[1:])
    dims = int(config["spatial_dims"])
    if len(spatial) != dims:
        raise InputError(
            f"{encoder} is {describe(config)}, but {data} are {len(spatial)}D images {tuple(image_shape)}: "
            f"use a {len(spatial)}D encoder or {dims}D data"
        )
    wanted = int(config["in_channels"])
    if channels != wanted:
        if channel_adapter == "none":
            hint = "channel_adapter: repeat (grey → RGB) or conv1x1 (learned)"
            raise InputError(
                f"{encoder} takes {wanted} input channels, {data} have {channels}: set {hint}, "
                "or use data with the encoder's channels"
            )
        if channel_adapter == "repeat" and wanted % channels:
            raise InputError(
                f"channel_adapter repeat cannot turn {channels} channels of {data} into the {wanted} {encoder} "
                "takes (not a multiple); use conv1x1"
            )
    if config["name"] in VITS:
        size = config["img_size"]
        size = (size,) * dims if isinstance(size, int) else tuple(size)
        patch = int(config["patch_size"])
        if any(s % patch for s in spatial):
            raise InputError(f"{encoder} cuts {patch}-pixel patches, which do not divide {data}'s size {spatial}")
        if tuple(size) != spatial:
            raise InputError(
                f"{encoder} was built for input {tuple(size)} (its position embeddings are fixed), "
                f"but {data} are {spatial}: resize the data to {tuple(size)}"
            )


class ChannelAdapter(nn.Module):
    """Maps the data's channels to the encoder's: ``"none"`` (identity; the counts must agree),
    ``"repeat"`` (each channel repeated, grey → RGB as ImageNet fine-tuning does), ``"conv1x1"`` (a
    learned 1×1 convolution, started as the repeat: each output channel the mean of the inputs)."""

    def __init__(self, mode: ChannelMode, in_channels: int, out_channels: int, spatial_dims: int):
        super().__init__()
        if mode not in ("none", "repeat", "conv1x1"):
            raise ValueError(f"channel_adapter must be 'none', 'repeat' or 'conv1x1', got {mode!r}")
        self.mode, self.in_channels, self.out_channels = mode, in_channels, out_channels
        if mode == "repeat" and out_channels % in_channels:
            raise InputError(
                f"channel_adapter repeat cannot turn {in_channels} data channels into the encoder's "
                f"{out_channels} (not a multiple); use conv1x1"
            )
        self.conv: nn.Module | None = None
        if mode == "conv1x1":
            conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(in_channels, out_channels, 1)
            nn.init.constant_(conv.weight, 1.0 / in_channels)
            nn.init.zeros_(conv.bias)  # pyright: ignore[reportArgumentType]  (a Conv's bias exists by default)
            self.conv = conv

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(images)
        if self.mode == "repeat" and images.shape[1] != self.out_channels:
            return images.repeat_interleave(self.out_channels // images.shape[1], dim=1)
        return images


def layer_decay_scales(encoder: Encoder, decay: float) -> dict[int, float]:
    """Learning-rate multipliers per encoder parameter (by ``id``) for layer-wise decay (BEiT, MAE
    fine-tuning): the deepest stage gets ``decay``, each shallower one another factor of ``decay``, so the
    stem learns slowest and the task's head (not listed: 1.0) fastest."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")
    stages = encoder.stages()
    scales = {}
    for depth, stage in enumerate(stages):
        for parameter in stage.parameters():
            scales[id(parameter)] = decay ** (len(stages) - depth)
    missing = [name for name, p in encoder.named_parameters() if id(p) not in scales]
    if missing:
        raise RuntimeError(f"encoder parameters outside every stage: {missing[:5]}")
    return scales
