"""What every downstream task shares: a pretrained (or random) encoder behind a channel adapter, the
fine-tuning mode, the check that encoder and data fit, and the optimiser with layer-wise decay.

A task subclass builds its head(s) on ``self.encoder`` (``self.encoder.out_dim`` features, or
:meth:`~medssl.nn.backbones.Encoder.stages` for a decoder) and implements the steps; it calls
:meth:`inputs` on every image batch so the scaling and channel adaptation happen once, here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from medssl.data.datamodules.base import stage_dataset
from medssl.errors import InputError
from medssl.methods.base import MedsslModule
from medssl.methods.schedules import configure_optimizer
from medssl.tasks.encoders import (
    ChannelAdapter,
    ChannelMode,
    FinetuneMode,
    check_fits,
    describe,
    layer_decay_scales,
    task_encoder,
)


class FinetuneTask(MedsslModule):
    """Base of the downstream tasks.

    Encoder: ``encoder`` (a medssl checkpoint or ``encoder.pt``; its encoder ``encoder_name``), or
    ``backbone`` (a :func:`~medssl.nn.backbones.build_encoder` config) for a random start;
    ``random_init=True`` re-initialises an encoder file's architecture (the control run).
    ``in_channels``: the data's channels (None: the encoder's); ``channel_adapter`` says how they become
    the encoder's (``none`` refuses a mismatch, ``repeat``, ``conv1x1``).
    ``finetune``: ``frozen`` (encoder fixed, in eval mode: BatchNorm statistics too; only the head
    learns), ``full`` (everything at ``lr``) or ``llrd`` (layer-wise decay: stage ``k`` of ``K`` from the
    top learns at ``lr × layer_decay^k``). Optimiser arguments as in
    :func:`~medssl.methods.schedules.configure_optimizer`."""

    def __init__(
        self,
        encoder: str | None = None,
        backbone: dict | None = None,
        encoder_name: str = "encoder",
        random_init: bool = False,
        in_channels: int | None = None,
        channel_adapter: ChannelMode = "none",
        finetune: FinetuneMode = "full",
        layer_decay: float = 0.75,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        min_lr: float | None = 1e-6,
        lr_scaling: Literal["none", "linear"] = "none",
    ):
        super().__init__()
        self.save_hyperparameters()
        if finetune not in ("frozen", "full", "llrd"):
            raise ValueError(f"finetune must be 'frozen', 'full' or 'llrd', got {finetune!r}")
        self.encoder, self.encoder_origin = task_encoder(encoder, backbone, encoder_name, random_init)
        encoder_channels = self.encoder.in_channels
        self.data_channels = encoder_channels if in_channels is None else int(in_channels)
        if self.data_channels != encoder_channels and channel_adapter == "none":
            raise InputError(
                f"the encoder ({self.encoder_origin}) takes {encoder_channels} channels, the data have "
                f"{self.data_channels} (in_channels): set channel_adapter to repeat or conv1x1"
            )
        self.adapter = ChannelAdapter(channel_adapter, self.data_channels, encoder_channels, self.encoder.spatial_dims)
        if finetune == "frozen":
            self.encoder.requires_grad_(False).eval()
        rank_zero_info(
            f"{type(self).__name__}: {describe(self.encoder.config())} from {self.encoder_origin}, "
            f"{finetune} fine-tuning"
        )

    def encoders(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder}

    @property
    def frozen(self) -> bool:
        return self.hparams.finetune == "frozen"

    def train(self, mode: bool = True):
        """Keeps a frozen encoder in eval mode (its BatchNorm statistics stay the pretrained ones)."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Lightning does not call ``train()`` at fit start (it keeps each submodule's mode and restores
        it around validation), so a frozen encoder is put in eval mode before every step, whatever
        mode it was left in. Subclasses that override this hook call it."""
        if self.frozen:
            self.encoder.eval()

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the encoder takes it: scaled (:func:`~medssl.nn.inputs.to_float`), then the data's
        channels adapted to the encoder's."""
        return self.adapter(self.scale(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``[B, out_dim]``; no gradient into a frozen encoder."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encoder(self.inputs(images))

    # -- refusing mismatched data before training ----------------------------------------------
    def check_data(self, image_shape: tuple[int, ...] | torch.Size, data: str) -> None:
        """Refuse data whose samples (``[C, *spatial]``) the encoder cannot take, naming both."""
        shape = tuple(int(s) for s in image_shape)
        if shape[0] != self.data_channels:
            raise InputError(
                f"{data} have {shape[0]} channels, but the task was set up for {self.data_channels} "
                f"(in_channels); set in_channels: {shape[0]}"
            )
        adapted = (self.encoder.in_channels, *shape[1:])  # the adapter's output
        check_fits(self.encoder.config(), adapted, "none", data, f"the encoder ({self.encoder_origin})")

    def setup(self, stage: str) -> None:
        """Checks one sample of the DataModule's data for ``stage`` against the encoder (a mismatch
        stops the run here, before any step)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        sample = first_sample(datamodule, stage)
        if sample is not None:
            self.check_data(
                sample["image"].shape, f"the {stage} data of {getattr(datamodule, 'cache', 'the datamodule')}"
            )

    def configure_optimizers(self):
        h = self.hparams
        scales = layer_decay_scales(self.encoder, h.layer_decay) if h.finetune == "llrd" else None
        return configure_optimizer(
            self, h.optimizer, self.effective_lr(), h.weight_decay, h.warmup_epochs, h.min_lr, lr_scales=scales
        )


def first_sample(datamodule: Any, stage: str) -> dict | None:
    """One sample of the dataset a DataModule serves for a Lightning stage (``fit`` → train), or None
    when it has none or does not keep per-stage ``datasets`` (then nothing is checked)."""
    dataset = stage_dataset(datamodule, stage)
    if dataset is None or len(dataset) == 0:
        return None
    sample = dataset[0]
    return sample if isinstance(sample, dict) and "image" in sample else None
