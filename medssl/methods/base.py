"""One LightningModule family for everything medssl trains.

:class:`MedsslModule` owns what every model shares: the optimiser with its warm-up + cosine schedule,
the input scaling (:func:`~medssl.nn.inputs.to_float`), and the **encoder contract**: ``encoders()``
names the networks a model trains for use elsewhere, and every checkpoint records them (their weight
prefix and, for medssl encoders, the configuration that rebuilds them), so ``medssl embed``,
``medssl export`` and fine-tuning read the contract, not a naming convention. Two branches:

- :class:`SSLMethod`: self-supervised pretraining of ``self.encoder``, with label-free and labelled
  monitors on the validation set (RankMe, leave-one-out kNN, a 2-fold linear probe);
- :class:`SlideClassifier`: slide-level (MIL) models that score whole bags piece by piece, with slide
  metrics, results and heatmaps written for each evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_info

from medssl.cache import SlideCache
from medssl.errors import InputError
from medssl.eval import knn_predict, linear_probe_accuracy, rankme
from medssl.eval.slides import slide_metrics, write_results
from medssl.export.encoders import load_encoder_weights
from medssl.methods.schedules import configure_optimizer, scaled_lr
from medssl.nn.backbones import Encoder, build_encoder
from medssl.nn.inputs import to_float
from medssl.viz.heatmaps import write_heatmap


class MedsslModule(pl.LightningModule):
    """The root of the family. Subclasses keep ``optimizer``, ``lr``, ``weight_decay``,
    ``warmup_epochs``, ``min_lr`` and optionally ``lr_scaling`` among their hyperparameters (see
    :func:`~medssl.methods.schedules.configure_optimizer` and :meth:`effective_lr`) and say which
    networks they train in :meth:`encoders`. Models with a medssl backbone take ``init_checkpoint``
    and ``init_encoder`` and call :meth:`load_init_checkpoint` where they build it."""

    @property
    def hparams(self) -> AttributeDict:
        """The hyperparameters, read by attribute. Lightning types them as any mutable mapping (what
        ``save_hyperparameters`` accepts); saved from ``__init__`` arguments, as here, they are always
        an ``AttributeDict``."""
        hparams = super().hparams
        if not isinstance(hparams, AttributeDict):
            raise TypeError(
                f"{type(self).__name__}.hparams is a {type(hparams).__name__}, not the AttributeDict "
                "that save_hyperparameters() stores"
            )
        return hparams

    def encoders(self) -> dict[str, torch.nn.Module]:
        """The networks this model trains for use outside it, by name (``"encoder"`` first: the one
        ``medssl embed`` and ``medssl export`` take by default). Submodules of this model only."""
        return {}

    @staticmethod
    def scale(images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 → float 0..1 (views from medssl transforms are already float)."""
        return to_float(images)

    def configure_optimizers(self):
        h = self.hparams
        return configure_optimizer(self, h.optimizer, self.effective_lr(), h.weight_decay, h.warmup_epochs, h.min_lr)

    def effective_lr(self) -> float:
        """The peak learning rate. ``lr_scaling="none"`` (the default): ``lr`` as given.
        ``"linear"``: ``lr`` is the rate for 256 samples, as SimCLR and SwAV state theirs, and the rate used
        is ``lr × global batch / 256``, the global batch being the per-device batch (the DataModule's
        ``batch_size``) × devices × ``accumulate_grad_batches``. ``min_lr`` is not scaled. Needs the
        trainer; the rate is logged once, when the optimiser is built."""
        h = self.hparams
        scaling = h.get("lr_scaling", "none")
        if scaling == "none":
            return h.lr
        trainer = self.trainer
        per_device = _per_device_batch(trainer)
        devices, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        lr = scaled_lr(h.lr, scaling, per_device * devices * accumulate)
        rank_zero_info(
            f"lr_scaling={scaling}: lr {h.lr:g} per 256 samples x global batch {per_device * devices * accumulate} "
            f"({per_device} per device x {devices} devices x {accumulate} accumulated) / 256 = {lr:g}"
        )
        return lr

    def load_init_checkpoint(self, encoder: torch.nn.Module) -> None:
        """Start ``encoder`` from the weights in ``init_checkpoint`` (a hyperparameter; None: keep the
        random initialisation): the encoder ``init_encoder`` of a medssl checkpoint, a medssl encoder
        file, or a plain ``state_dict`` (see :func:`~medssl.export.encoders.load_encoder_weights`).
        Called at construction, where the model builds ``encoder`` and before anything copies it (a
        momentum encoder), so every use of the model sees it; resuming a run loads the checkpoint's
        own weights over it. Nothing is downloaded: the file is the user's."""
        path = self.hparams.get("init_checkpoint")
        if path is None:
            return
        if not isinstance(encoder, Encoder):
            raise InputError(
                f"init_checkpoint {path}: {type(self).__name__}'s encoder is a {type(encoder).__name__}, "
                "not a medssl backbone; init_checkpoint initialises backbones only"
            )
        loaded = load_encoder_weights(encoder, path, self.hparams.get("init_encoder", "encoder"))
        rank_zero_info(f"{type(self).__name__}: encoder initialised from {loaded}")

    def encoder_records(self) -> dict[str, dict[str, Any]]:
        """The contract as a checkpoint stores it: per encoder, the ``state_dict`` prefix of the weights
        to load, the class, and for a medssl :class:`~medssl.nn.backbones.Encoder` its configuration."""
        names = {id(module): name for name, module in self.named_modules()}
        records = {}
        for name, module in self.encoders().items():
            if id(module) not in names:
                raise ValueError(f"{type(self).__name__}.encoders()[{name!r}] is not a submodule of the model")
            prefix = names[id(module)] + "."
            record: dict[str, Any] = {
                "prefix": prefix,
                "class": f"{type(module).__module__}.{type(module).__qualname__}",
            }
            if isinstance(module, Encoder):
                record.update(prefix=prefix + "network.", config=module.config())
            records[name] = record
        return records

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class (``medssl heatmap`` rebuilds slide models from the checkpoint alone) and the
        encoder contract (``medssl export`` and ``embed`` find each encoder's weights by it)."""
        checkpoint["medssl_model"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["medssl_encoders"] = self.encoder_records()


class SSLMethod(MedsslModule):
    """Base of the self-supervised methods. ``backbone`` is the :func:`~medssl.nn.backbones.build_encoder`
    config (``name``, ``spatial_dims``, ``in_channels``, ...). ``lr`` is used as given unless
    ``lr_scaling="linear"``, which reads it as the rate for 256 samples (:meth:`~MedsslModule.effective_lr`).
    ``init_checkpoint`` starts the encoder from a file's weights instead of random ones
    (:meth:`~MedsslModule.load_init_checkpoint`; ``init_encoder`` picks the encoder of a medssl
    checkpoint). A method builds its heads and losses and implements :meth:`training_step`."""

    def __init__(
        self,
        backbone: dict | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        min_lr: float = 1e-6,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        lr_scaling: Literal["none", "linear"] = "none",
        init_checkpoint: str | None = None,
        init_encoder: str = "encoder",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(**(backbone or {}))
        self.load_init_checkpoint(self.encoder)
        self._val_features: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def encoders(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder}

    # -- inputs -------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of images, the representation that is exported and evaluated."""
        return self.encoder(self.scale(images))

    def embed_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features of each view; consecutive views of one size go through the encoder together
        (multi-crop: one pass for the global crops, one for the local ones)."""
        features, start = [], 0
        while start < len(views):
            stop = start + 1
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            features.extend(self.embed(torch.cat(views[start:stop])).chunk(stop - start))
            start = stop
        return features

    # -- monitors -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        features = self.embed(batch["image"])
        self._val_features.append(features.detach().float().cpu())
        labels = batch.get("label")  # a class per sample; segmentation maps and unlabelled data: RankMe only
        if labels is None or labels.ndim != 1:
            labels = torch.full((len(features),), -1, dtype=torch.long)
        self._val_labels.append(labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        """Monitors on the whole validation set. Every rank reads all of it (the eval loaders are not
        split), so the values agree across ranks without gathering, and no sample is counted twice."""
        if not self._val_features:
            return
        features, labels = torch.cat(self._val_features), torch.cat(self._val_labels)
        self._val_features, self._val_labels = [], []
        self.log("val/rankme", rankme(features), sync_dist=True)
        accuracy = leave_one_out_knn(features, labels, self.hparams.knn_k, self.hparams.knn_temperature)
        if accuracy is not None:
            self.log("val/knn_accuracy", accuracy, sync_dist=True)
        probe = linear_probe_accuracy(features, labels)
        if probe is not None:
            self.log("val/linear_probe_accuracy", probe, sync_dist=True)


def _per_device_batch(trainer: pl.Trainer) -> int:
    """The training batch size on one device: the DataModule's ``batch_size``, else the train loader's."""
    size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if not isinstance(size, int):
        trainer.estimated_stepping_batches  # noqa: B018  (loads the train loader if it is not yet)
        loader = trainer.train_dataloader
        size = getattr(loader, "batch_size", None) or getattr(
            getattr(loader, "batch_sampler", None), "batch_size", None
        )
    if not isinstance(size, int) or size < 1:
        raise ValueError(
            "lr_scaling='linear' needs the per-device batch size: fit with a DataModule that has an integer "
            "batch_size, or a train DataLoader with one"
        )
    return size


def leave_one_out_knn(features: torch.Tensor, labels: torch.Tensor, k: int, temperature: float) -> float | None:
    """kNN accuracy of each labelled sample against all the others (None without two classes)."""
    keep = labels >= 0
    features, labels = features[keep], labels[keep]
    if len(labels) < 3 or labels.unique().numel() < 2:
        return None
    num_classes = int(labels.max()) + 1
    correct = 0
    for i in range(len(labels)):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, len(labels))])
        scores = knn_predict(features[others], labels[others], features[i : i + 1], num_classes, k, temperature)
        correct += int(scores.argmax(1).item() == labels[i].item())
    return correct / len(labels)


class TwoViewMethod(SSLMethod):
    """Methods that embed two views of each image through ``self.projector`` and compare them with
    :meth:`pair_loss` (SimCLR, Barlow Twins, ...)."""

    projector: torch.nn.Module

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        view1, view2 = batch["views"][:2]  # separate passes: BatchNorm sees one view at a time
        loss = self.pair_loss(self.projector(self.embed(view1)), self.projector(self.embed(view2)))
        self.log("train/loss", loss, prog_bar=True)
        return loss


class SlideClassifier(MedsslModule):
    """Base of the slide-level (MIL) models: they score whole bags piece by piece.

    A model says how to score a bag incrementally: ``start_bag() → state``, ``add_piece(state,
    instances)`` for each piece, ``finish_bag(state) → (bag probability, instance scores [N])``.
    Validation and test loaders deliver bags as consecutive pieces
    (:class:`~medssl.data.bags.BagPieceDataset`), so memory stays bounded by one piece whatever the bag
    size; :meth:`score_bag` does the same for a bag in hand and :meth:`score_pieces` for any stream of
    pieces (whole-slide inference). Bag labels are binary: class index 0 is negative, 1 positive.
    Instance scores are what a heatmap shows: instance probabilities (INS), attention (ABMIL).

    ``piece_size``: instances scored at a time in :meth:`score_bag`. ``heatmaps``: also draw every
    evaluated slide's instance scores over its thumbnail (test stage always, validation on the last
    epoch only) into ``<log dir>/results/<stage>/heatmaps``; ``heatmap_stretch`` spreads their colours
    from each slide's lowest to highest score (default: the model's ``stretch_heatmaps``). The
    optimiser arguments are those of :func:`~medssl.methods.schedules.configure_optimizer`
    (``min_lr=None``: constant learning rate) and ``lr_scaling`` (:meth:`~MedsslModule.effective_lr`)."""

    instance_score_name = "score"  #: what the instance scores are, for heatmap legends
    stretch_heatmaps = False  #: True: colours span each slide's lowest to highest score (attention)

    def __init__(
        self,
        piece_size: int = 8192,
        heatmaps: bool = False,
        heatmap_stretch: bool | None = None,
        optimizer: str = "adamw",
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        min_lr: float | None = None,
        lr_scaling: Literal["none", "linear"] = "none",
    ):
        super().__init__()
        self.save_hyperparameters()
        self._evaluated: list[dict] = []
        self._bags = BagAccumulator(self)
        self.classes: list[str] | None = None  # [negative, positive] slide labels, from the data it fits

    # -- which label is positive travels with the weights ----------------------------------------
    def on_fit_start(self) -> None:
        classes = getattr(self.trainer.datamodule, "classes", None)  # type: ignore[attr-defined]
        self.classes = list(classes) if classes else self.classes

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medssl_classes"] = self.classes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.classes = checkpoint.get("medssl_classes") or self.classes

    # -- scoring, to be provided ---------------------------------------------------------------
    def start_bag(self) -> Any:
        raise NotImplementedError

    def add_piece(self, state: Any, instances: torch.Tensor) -> None:
        raise NotImplementedError

    def finish_bag(self, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def score_pieces(self, pieces: Iterable[dict]) -> Iterator[dict]:
        """A scored-slide record (:mod:`medssl.eval.slides`) for each bag in a stream of pieces."""
        bags = BagAccumulator(self)
        for piece in pieces:
            record = bags.add(piece)
            if record is not None:
                yield record

    @torch.no_grad()
    def score_bag(self, instances: torch.Tensor, piece_size: int | None = None) -> tuple[float, torch.Tensor]:
        """(positive probability, instance scores ``[N]``) of one bag ``[N, ...]``, piece by piece."""
        size = piece_size or self.hparams.piece_size
        starts = range(0, len(instances), size)
        pieces = (
            {
                "slide": 0,
                "start": start,
                "last": start + size >= len(instances),
                "instances": instances[start : start + size],
            }
            for start in starts
        )
        record = next(self.score_pieces(pieces))
        return record["probability"], record["scores"]

    # -- evaluation ------------------------------------------------------------------------------
    def validation_step(self, piece: dict, batch_idx: int) -> None:
        self._evaluate_piece(piece)

    def test_step(self, piece: dict, batch_idx: int) -> None:
        self._evaluate_piece(piece)

    def _evaluate_piece(self, piece: dict) -> None:
        record = self._bags.add(piece)
        if record is not None:
            self._evaluated.append(record)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        evaluated, self._evaluated, self._bags = self._evaluated, [], BagAccumulator(self)
        if not evaluated or self.trainer.sanity_checking:
            return
        metrics = slide_metrics(evaluated)
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.log(f"{stage}/{name}", value, sync_dist=False)  # every rank evaluates every slide
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "results" / stage  # a collective
        if self.trainer.is_global_zero:
            last_epoch = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
            write_results(folder, evaluated, metrics, epoch=self.current_epoch)
            if self.hparams.heatmaps and (stage == "test" or last_epoch):
                self._draw_heatmaps(folder / "heatmaps", evaluated)

    def _draw_heatmaps(self, folder: Path, evaluated: list[dict]) -> None:
        """Each slide's scores over its thumbnail, from the cache its pieces named."""
        stretch = self.stretch_heatmaps if self.hparams.heatmap_stretch is None else self.hparams.heatmap_stretch
        caches: dict[str, SlideCache] = {}
        for record in evaluated:
            if not record.get("cache"):
                continue
            cache = caches.setdefault(record["cache"], SlideCache(record["cache"]))
            write_heatmap(
                cache,
                record["slide_id"],
                record["scores"].numpy(),
                folder,
                coords=record["coords"].numpy(),
                title=self.instance_score_name,
                stretch=stretch,
            )


class BagAccumulator:
    """Scores bags that arrive as consecutive pieces (``slide``, ``start``, ``last``, ``instances`` and
    optionally ``coords``, ``instance_truth``, ``slide_id``, ``label``, ``cache``): the one loop behind
    validation, testing, :meth:`SlideClassifier.score_bag` and whole-slide inference."""

    def __init__(self, model: SlideClassifier):
        self.model = model
        self.open: dict[int, dict] = {}

    def add(self, piece: dict) -> dict | None:
        """Add one piece; the bag's scored-slide record when it was the bag's last piece, else None."""
        slide = int(piece["slide"])
        if int(piece["start"]) == 0:
            self.open[slide] = {"state": self.model.start_bag(), "coords": [], "truth": []}
        bag = self.open[slide]
        self.model.add_piece(bag["state"], piece["instances"].to(self.model.device))
        if "coords" in piece:
            bag["coords"].append(torch.as_tensor(piece["coords"]).cpu())
        if "instance_truth" in piece:
            bag["truth"].append(torch.as_tensor(piece["instance_truth"]).cpu())
        if not bool(piece["last"]):
            return None
        del self.open[slide]
        probability, scores = self.model.finish_bag(bag["state"])
        return {
            "slide_id": piece.get("slide_id", str(slide)),
            "label": int(piece.get("label", -1)),
            "probability": float(probability),
            "scores": scores.detach().float().cpu(),
            "coords": torch.cat(bag["coords"]) if bag["coords"] else None,
            "truth": torch.cat(bag["truth"]) if bag["truth"] else None,
            "cache": piece.get("cache"),
        }
