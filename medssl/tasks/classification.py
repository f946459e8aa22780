"""Classification fine-tuning of a pretrained (or random) encoder: tiles, 2D slices, 3D patches or
whole volumes, with a linear or MLP head on the pooled features and cross-entropy.

Validation and test metrics are computed once over the whole set from every sample's probabilities
(:func:`~medssl.eval.classification.classification_metrics`: AUROC macro and per class, balanced
accuracy, macro F1, quadratic-weighted kappa for ordinal grades). medssl's evaluation loaders are not
split across DDP ranks, so every rank sees every sample and computes the same values: no gathering,
and nothing counted twice. Rank 0 writes ``<log dir>/results/<stage>/metrics.json`` and
``predictions.csv`` (sample, case, true label, prediction, one probability per class), atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medssl.errors import InputError
from medssl.eval.classification import classification_metrics
from medssl.eval.results import write_csv_atomic, write_json_atomic
from medssl.tasks.base import FinetuneTask

HeadKind = Literal["linear", "mlp"]


def classification_head(in_dim: int, num_classes: int, kind: HeadKind, hidden_dim: int, dropout: float) -> nn.Module:
    """A linear layer (the linear probe of a frozen encoder), or an MLP with one hidden layer."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")


class Classifier(FinetuneTask):
    """A classifier on an encoder (see :class:`~medssl.tasks.base.FinetuneTask` for the encoder,
    channel adapter, fine-tuning mode and optimiser arguments, passed through ``**base``).

    ``num_classes`` (or ``classes``, the names in index order, which then fix it); ``classes`` not
    given are taken from the DataModule's ``classes`` when fitting starts and travel in the checkpoint
    (``medssl_classes``), so evaluation and inference name them. ``head``: ``linear`` or ``mlp``
    (``head_hidden_dim``, ``head_dropout``). ``ordinal``: the classes are ordered grades (report
    quadratic-weighted kappa). ``class_weights``: ``balanced`` weighs the loss by inverse class
    frequency in the training set (``n / (C · n_c)``), ``none`` does not."""

    def __init__(
        self,
        num_classes: int | None = None,
        classes: list[str] | None = None,
        head: HeadKind = "linear",
        head_hidden_dim: int = 256,
        head_dropout: float = 0.0,
        ordinal: bool = False,
        class_weights: Literal["none", "balanced"] = "none",
        **base,
    ):
        super().__init__(**base)
        self.save_hyperparameters()
        if classes is not None and num_classes is not None and len(classes) != num_classes:
            raise InputError(f"classes {classes} name {len(classes)} classes, but num_classes is {num_classes}")
        count = len(classes) if classes is not None else num_classes
        if count is None or count < 2:
            raise InputError(f"a classifier needs at least 2 classes: set num_classes or classes (got {count})")
        if class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {class_weights!r}")
        self.num_classes = int(count)
        self.classes: list[str] | None = list(classes) if classes is not None else None
        self.head = classification_head(self.encoder.out_dim, self.num_classes, head, head_hidden_dim, head_dropout)
        self.loss_weights: torch.Tensor | None = None
        self._outputs: list[dict] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, C]`` of an image batch."""
        return self.head(self.features(images))

    # -- the classes travel with the weights -----------------------------------------------------
    def on_fit_start(self) -> None:
        """Take the DataModule's classes (refusing a disagreement) and, for ``balanced``, its class counts."""
        datamodule = getattr(self.trainer, "datamodule", None)
        found = getattr(datamodule, "classes", None)
        if found:
            found = list(found)
            if self.classes is not None and self.classes != found:
                raise InputError(f"the model's classes {self.classes} differ from the data's {found} ({datamodule})")
            if len(found) != self.num_classes:
                raise InputError(
                    f"the data have {len(found)} classes {found}, the model num_classes {self.num_classes}"
                )
            self.classes = found
        if self.hparams.class_weights == "balanced":
            counts = getattr(datamodule, "class_counts", None)
            if counts is None:
                raise InputError(
                    "class_weights: balanced needs a DataModule with class_counts (ClassificationDataModule)"
                )
            counts = counts("train").float()
            self.loss_weights = counts.sum() / (len(counts) * counts.clamp(min=1))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medssl_classes"] = self.classes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.classes = checkpoint.get("medssl_classes") or self.classes

    def class_names(self) -> list[str]:
        """The classes by index: the model's, else the DataModule's, else their indices."""
        found = getattr(getattr(self._trainer, "datamodule", None), "classes", None) if self._trainer else None
        return list(self.classes or found or [str(k) for k in range(self.num_classes)])

    # -- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        weights = None if self.loss_weights is None else self.loss_weights.to(logits)
        loss = F.cross_entropy(logits.float(), batch["label"], weight=weights)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"probabilities": self(batch["image"]).float().softmax(1), "sample_id": batch.get("sample_id")}

    def _collect(self, batch: dict) -> None:
        self._outputs.append(
            {
                "probabilities": self(batch["image"]).float().softmax(1).cpu(),
                "labels": batch["label"].cpu(),
                "sample_ids": list(batch.get("sample_id", [])),
                "case_ids": list(batch.get("case_id", [])),
            }
        )

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        """Metrics over the whole set (identical on every rank: each evaluated all of it), logged
        unsynchronised; rank 0 writes them and the predictions."""
        outputs, self._outputs = self._outputs, []
        if not outputs or self.trainer.sanity_checking:
            return
        probabilities = torch.cat([o["probabilities"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        classes = self.class_names()
        metrics = classification_metrics(probabilities, labels, classes, ordinal=self.hparams.ordinal)
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.log(f"{stage}/{name}", value, sync_dist=False)
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "results" / stage  # a collective
        if self.trainer.is_global_zero:
            summary = {"epoch": self.current_epoch, "classes": classes, "encoder": self.encoder_origin, **metrics}
            write_json_atomic(folder / "metrics.json", summary)
            write_predictions(folder / "predictions.csv", outputs, probabilities, labels, classes)


def write_predictions(
    path: Path, outputs: list[dict], probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> Path:
    """``predictions.csv``: sample_id, case_id, label, predicted, then ``p_<class>`` per class."""
    sample_ids = [s for o in outputs for s in o["sample_ids"]] or [str(k) for k in range(len(labels))]
    case_ids = [c for o in outputs for c in o["case_ids"]] or [""] * len(labels)
    predicted = probabilities.argmax(1)
    rows = (
        [sample, case, classes[int(label)], classes[int(guess)], *(f"{p:.6f}" for p in row.tolist())]
        for sample, case, label, guess, row in zip(sample_ids, case_ids, labels, predicted, probabilities)
    )
    columns = ["sample_id", "case_id", "label", "predicted", *(f"p_{name}" for name in classes)]
    return write_csv_atomic(path, columns, rows)
