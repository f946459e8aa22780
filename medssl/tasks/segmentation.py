"""2D and 3D segmentation fine-tuning from any medssl encoder, scored per case on whole 3D volumes.

Training: a 2D model on axial slices, a 3D model on random patches
(:class:`~medssl.data.datamodules.segmentation.SegmentationDataModule`), with MONAI's ``DiceCELoss``
(softmax, one-hot target). The network is a U-Net on a ResNet encoder or a UNETR on a ViT
(:mod:`medssl.nn.decoders`), sharing the encoder's modules.

Evaluation (validation and test) is per case on the whole volume, the joint 2D/3D protocol: a 2D model
predicts every axial slice and the slices are stacked into the 3D label volume; a 3D model runs MONAI's
``sliding_window_inference`` (window = the training patch, Gaussian weighting, ``sw_overlap``). Each case
gets 3D Dice, IoU and HD95 (mm, from the cache spacing) per foreground class
(:mod:`medssl.eval.segmentation`); the means over cases are logged as ``<stage>/dice``, ``<stage>/iou``,
``<stage>/hd95`` and per class ``<stage>/dice_<class>`` (and ``iou_``, ``hd95_``). Every rank evaluates
every case (the loaders are not split), so the values agree across DDP ranks without gathering; rank 0
writes ``<log dir>/results/<stage>/cases.csv`` (one row per volume) and ``metrics.json`` atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from medssl.errors import InputError
from medssl.eval.results import write_csv_atomic, write_json_atomic
from medssl.eval.segmentation import case_metrics, case_row, summarise
from medssl.nn.decoders import ViTUNETR, segmentation_network
from medssl.tasks.base import FinetuneTask, first_sample


class Segmenter(FinetuneTask):
    """Semantic segmentation with ``num_classes`` classes, background (label 0) included.

    ``class_names``: one per class, background first (default ``background``, ``class1`` …); metrics
    are named after them. ``decoder_channels``: the U-Net's (:class:`~medssl.nn.decoders.ResNetUNet`);
    ``feature_size``: the UNETR's. Inference: ``roi_size`` is the sliding window (default: the training
    patch for 3D, the ViT's ``img_size`` for a ViT; a 2D U-Net takes whole slices),
    ``sw_overlap``/``sw_batch_size`` its overlap and windows per step, ``slice_batch_size`` the slices a
    2D model predicts at once. ``hd95=False`` skips the Hausdorff distance (the slowest metric).
    Encoder and optimiser arguments (``**base``): :class:`~medssl.tasks.base.FinetuneTask`."""

    def __init__(
        self,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        decoder_channels: Sequence[int] | None = None,
        feature_size: int = 16,
        roi_size: Sequence[int] | None = None,
        sw_overlap: float = 0.25,
        sw_batch_size: int = 2,
        slice_batch_size: int = 32,
        hd95: bool = True,
        **base,
    ):
        super().__init__(**base)
        self.save_hyperparameters()
        from monai.losses.dice import DiceCELoss

        if num_classes < 2:
            raise InputError(f"num_classes counts the background too: at least 2, got {num_classes}")
        names = list(class_names) if class_names else ["background", *(f"class{k}" for k in range(1, num_classes))]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise InputError(f"class_names {names} must name each of the {num_classes} classes once, background first")
        self.num_classes, self.class_names = num_classes, names
        self.network = segmentation_network(self.encoder, num_classes, decoder_channels, feature_size)
        self.loss = DiceCELoss(softmax=True, to_onehot_y=True)
        self.roi_size: tuple[int, ...] | None = tuple(int(s) for s in roi_size) if roi_size else None
        if self.roi_size is None and isinstance(self.network, ViTUNETR):
            self.roi_size = self.network.img_size
        self._cases: list[dict] = []

    @property
    def spatial_dims(self) -> int:
        return int(self.encoder.spatial_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, *spatial]`` of an image batch (scaled and channel-adapted here)."""
        return self.network(self.inputs(images))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    # -- checks before training ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Training samples are checked against the encoder (:meth:`FinetuneTask.setup`); whole evaluation
        volumes for their channels only (a 2D model reads them slice by slice). The DataModule's label
        maps are checked against ``num_classes``, and a 3D model's window defaults to its patch size."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":
            super().setup(stage)
        else:
            sample = first_sample(datamodule, stage)
            if sample is not None and sample["image"].shape[0] != self.data_channels:
                raise InputError(
                    f"the {stage} volumes of {getattr(datamodule, 'cache', 'the datamodule')} have "
                    f"{sample['image'].shape[0]} channels, the task was set up for {self.data_channels} (in_channels)"
                )
        check_labels = getattr(datamodule, "check_labels", None)
        if callable(check_labels):
            check_labels(self.num_classes)
        patch: Sequence[int] = getattr(datamodule, "spatial_size", None) or ()
        if self.roi_size is None and self.spatial_dims == 3 and len(patch) == 3:
            self.roi_size = tuple(int(s) for s in patch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medssl_roi_size"] = list(self.roi_size) if self.roi_size else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        roi = checkpoint.get("medssl_roi_size")
        self.roi_size = tuple(roi) if roi else self.roi_size

    # -- inference on the cache grid ---------------------------------------------------------------
    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of a batch, through a sliding window when the model has one (3D, or a fixed-size ViT)."""
        if self.roi_size is None:
            return self(images)
        from monai.inferers.utils import sliding_window_inference

        logits = sliding_window_inference(
            images,
            self.roi_size,
            self.hparams.sw_batch_size,
            self,
            overlap=self.hparams.sw_overlap,
            mode="gaussian",
        )
        return logits if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)  # one output: a tensor

    @torch.no_grad()
    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Argmax labels ``int64 [Z, Y, X]`` (on the CPU) of one volume ``float [1, Z, Y, X]`` on the cache
        grid: a 2D model slice by slice (``slice_batch_size`` at a time) stacked, a 3D model by sliding
        window. Runs in eval mode and restores the mode it found."""
        if image.ndim != 4:
            raise ValueError(f"predict_volume takes one volume [C, Z, Y, X], got shape {tuple(image.shape)}")
        training = self.training
        self.eval()
        try:
            image = image.to(self.device)
            if self.spatial_dims == 3:
                return self._logits(image[None]).argmax(1)[0].cpu()
            slices = image.movedim(1, 0)  # [Z, C, Y, X]: the axial slices as a batch
            step = int(self.hparams.slice_batch_size)
            parts = [self._logits(slices[z : z + step]).argmax(1).cpu() for z in range(0, len(slices), step)]
            return torch.cat(parts)
        finally:
            self.train(training)

    # -- evaluation per case -------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_volume(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_volume(batch)

    def _evaluate_volume(self, batch: dict) -> None:
        """Score one whole volume (a batch of one from the evaluation loader)."""
        if self.trainer.sanity_checking:
            return
        for k in range(len(batch["image"])):
            prediction = self.predict_volume(batch["image"][k])
            metrics = case_metrics(
                prediction,
                batch["label"][k, 0].cpu(),
                self.num_classes,
                spacing=[float(s) for s in batch["spacing"][k]],
                hd95=self.hparams.hd95,
            )
            self._cases.append(case_row(str(batch["volume_id"][k]), metrics, self.class_names[1:]))

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        rows, self._cases = self._cases, []
        if not rows:
            return
        summary = summarise(rows, self.class_names[1:])
        for name, value in summary.items():
            if math.isfinite(value):
                self.log(f"{stage}/{name}", value, sync_dist=False)  # every rank scored every case
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "results" / stage  # a collective
        if self.trainer.is_global_zero:
            _write_results(folder, rows, summary, epoch=self.current_epoch)


def _write_results(folder: Path, rows: list[dict], summary: dict, epoch: int) -> None:
    """``cases.csv`` (one row per volume) and ``metrics.json`` (the means; NaN as null), atomically."""
    columns = list(rows[0])
    write_csv_atomic(folder / "cases.csv", columns, ([_cell(row[k]) for k in columns] for row in rows))
    clean = {k: (v if math.isfinite(v) else None) for k, v in summary.items()}
    write_json_atomic(folder / "metrics.json", {"epoch": epoch, **clean})


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
