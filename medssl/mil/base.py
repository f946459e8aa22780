"""What every slide-level (MIL) model shares: scoring whole bags piece by piece, slide metrics, and the
results of each evaluation written next to the run's logs.

A model subclasses :class:`SlideClassifier` and says how to score a bag incrementally:
``start_bag() → state``, ``add_piece(state, instances)`` for each piece, ``finish_bag(state) →
(bag probability, instance scores [N])``. Validation and test loaders deliver bags as consecutive
pieces (:class:`~medssl.data.bags.BagPieceDataset`), so memory stays bounded by one piece whatever
the bag size; :meth:`SlideClassifier.score_bag` does the same for a bag in hand.

Bag labels are binary: class index 0 is negative, 1 positive (fix the order with the data module's
``classes``). Instance scores are what a heatmap shows: instance probabilities (INS), attention (ABMIL).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_specificity

from medssl.methods.schedules import configure_optimizer
from medssl.mil.heatmaps import write_heatmap


class SlideClassifier(pl.LightningModule):
    """``piece_size``: instances scored at a time in :meth:`score_bag`. ``heatmaps``: also draw every
    evaluated slide's instance scores over its thumbnail (test stage always, validation on the last
    epoch only) into ``<log dir>/results/<stage>/heatmaps``; ``heatmap_stretch`` spreads their colours
    from each slide's lowest to highest score (default: the model's ``stretch_heatmaps``). The optimiser arguments are those of
    :func:`~medssl.methods.schedules.configure_optimizer` (``min_lr=None``: constant learning rate)."""

    instance_score_name = "score"  #: what the instance scores are, for heatmap legends
    stretch_heatmaps = False  #: True: colours span each slide's lowest to highest score (attention)

    def __init__(self, piece_size: int = 8192, heatmaps: bool = False, heatmap_stretch: bool | None = None,
                 optimizer: str = "adamw", lr: float = 2e-4,
                 weight_decay: float = 1e-4, warmup_epochs: float = 0.0, min_lr: float | None = None):
        super().__init__()
        self.save_hyperparameters()
        self._evaluated: list[dict] = []
        self._open: dict[int, Any] = {}

    def configure_optimizers(self):
        h = self.hparams
        return configure_optimizer(self, h.optimizer, h.lr, h.weight_decay, h.warmup_epochs, h.min_lr)

    # -- scoring, to be provided ---------------------------------------------------------------
    def start_bag(self) -> Any:
        raise NotImplementedError

    def add_piece(self, state: Any, instances: torch.Tensor) -> None:
        raise NotImplementedError

    def finish_bag(self, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def score_bag(self, instances: torch.Tensor, piece_size: int | None = None) -> tuple[float, torch.Tensor]:
        """(positive probability, instance scores ``[N]``) of one bag ``[N, ...]``, piece by piece."""
        piece_size = piece_size or self.hparams.piece_size
        state = self.start_bag()
        for start in range(0, len(instances), piece_size):
            self.add_piece(state, instances[start : start + piece_size].to(self.device))
        probability, scores = self.finish_bag(state)
        return float(probability), scores.float().cpu()

    # -- evaluation ------------------------------------------------------------------------------
    def validation_step(self, piece: dict, batch_idx: int) -> None:
        self._evaluate_piece(piece)

    def test_step(self, piece: dict, batch_idx: int) -> None:
        self._evaluate_piece(piece)

    def _evaluate_piece(self, piece: dict) -> None:
        slide = int(piece["slide"])
        if int(piece["start"]) == 0:
            self._open[slide] = {"state": self.start_bag(), "coords": [], "truth": []}
        record = self._open[slide]
        self.add_piece(record["state"], piece["instances"].to(self.device))
        record["coords"].append(piece["coords"].cpu())
        if "instance_truth" in piece:
            record["truth"].append(piece["instance_truth"].cpu())
        if bool(piece["last"]):
            del self._open[slide]
            probability, scores = self.finish_bag(record["state"])
            self._evaluated.append({
                "slide_id": piece["slide_id"], "label": int(piece["label"]), "probability": float(probability),
                "scores": scores.detach().float().cpu(), "coords": torch.cat(record["coords"]),
                "truth": torch.cat(record["truth"]) if record["truth"] else None,
            })

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        evaluated, self._evaluated, self._open = self._evaluated, [], {}
        if not evaluated or self.trainer.sanity_checking:
            return
        metrics = slide_metrics(evaluated)
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.log(f"{stage}/{name}", value, sync_dist=False)  # every rank evaluates every slide
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "results" / stage  # a collective
        if self.trainer.is_global_zero:
            last_epoch = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
            draw = self.hparams.heatmaps and (stage == "test" or last_epoch)
            self._write_results(folder, evaluated, metrics, draw)

    def _write_results(self, folder: Path, evaluated: list[dict], metrics: dict, draw: bool) -> None:
        write_results(folder, evaluated, metrics, epoch=self.current_epoch)
        datamodule = getattr(self.trainer, "datamodule", None)
        if draw and datamodule is not None:
            from medssl.preprocess.cache import SlideCache

            cache = SlideCache(datamodule.cache)
            for record in evaluated:
                write_heatmap(cache, record["slide_id"], record["scores"].numpy(), folder / "heatmaps",
                              coords=record["coords"].numpy(), title=self.instance_score_name,
                              stretch=self.stretch_heatmaps if self.hparams.heatmap_stretch is None
                              else self.hparams.heatmap_stretch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class, so ``medssl heatmap`` can rebuild the model from the checkpoint alone."""
        checkpoint["medssl_model"] = f"{type(self).__module__}.{type(self).__qualname__}"


def slide_metrics(evaluated: list[dict]) -> dict[str, float | None]:
    """Bag AUROC and balanced accuracy (threshold 0.5) over slides with a label in {0, 1}, and instance
    AUROC over instances with known truth. A metric that needs both classes is None without them."""
    labelled = [r for r in evaluated if r["label"] in (0, 1)]
    metrics: dict[str, float | None] = {"bag_auroc": None, "balanced_accuracy": None, "instance_auroc": None,
                                        "slides": float(len(evaluated))}
    if labelled:
        scores = torch.tensor([r["probability"] for r in labelled])
        labels = torch.tensor([r["label"] for r in labelled])
        if labels.unique().numel() == 2:
            metrics["bag_auroc"] = float(binary_auroc(scores, labels))
            sensitivity = float(binary_accuracy(scores[labels == 1], labels[labels == 1]))
            metrics["balanced_accuracy"] = 0.5 * (sensitivity + float(binary_specificity(scores, labels)))
    truths = [(r["scores"], r["truth"]) for r in evaluated if r["truth"] is not None]
    if truths:
        scores, truth = torch.cat([s for s, _ in truths]), torch.cat([t for _, t in truths])
        known = ~torch.isnan(truth)
        if known.any() and truth[known].unique().numel() == 2:
            metrics["instance_auroc"] = float(binary_auroc(scores[known], truth[known].long()))
    return metrics


def write_results(folder: Path, evaluated: list[dict], metrics: dict, epoch: int) -> None:
    """``slides.csv`` (slide_id, label, probability) and ``metrics.json``, written whole each time."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "slides.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "probability", "instances"])
        for r in evaluated:
            writer.writerow([r["slide_id"], r["label"], f"{r['probability']:.6f}", len(r["scores"])])
    tmp.replace(folder / "slides.csv")
    (folder / "metrics.json").write_text(json.dumps({"epoch": epoch, **metrics}, indent=2) + "\n")


def bag_probability(instance_probabilities: torch.Tensor, rule: str = "mean", top_k: int = 10) -> torch.Tensor:
    """A slide's positive probability from its instances': ``mean`` (INS's rule), ``max``, or ``topk``
    (the mean of the ``top_k`` highest)."""
    if rule == "mean":
        return instance_probabilities.mean()
    if rule == "max":
        return instance_probabilities.max()
    if rule == "topk":
        return instance_probabilities.topk(min(top_k, len(instance_probabilities))).values.mean()
    raise ValueError(f"bag rule must be 'mean', 'max' or 'topk', got {rule!r}")


