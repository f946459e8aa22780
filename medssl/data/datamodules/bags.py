"""Slides as bags of instances (embeddings or tile pixels) for slide-level learning from slide labels:
whole bags (:class:`BagDataModule`, attention MIL) or single instances (:class:`InstanceDataModule`,
instance classifiers) for training, whole bags in bounded pieces for evaluation; and cases as sets of
stained slides (:class:`StainSetDataModule`, multistain pretraining)."""

from __future__ import annotations

from torch.utils.data import DataLoader

from medssl.data.bags import (
    BagPieceDataset,
    InstanceDataset,
    SlideBagDataset,
    StainSetDataset,
    collate_bags,
    collate_stain_sets,
)
from medssl.data.datamodules.base import CacheDataModule
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.transforms import MultiViewd, histology_view
from medssl.errors import InputError


def binary_classes(labels: list[str], positive_class: str, cache: str) -> list[str]:
    """``[negative, positive]`` from a cohort's slide labels, refusing anything but two labels of which
    one is ``positive_class``."""
    if positive_class not in labels or len(labels) != 2:
        raise InputError(
            f"{cache}: slide-level learning needs two slide labels, one of them positive_class "
            f"{positive_class!r}; the cache's slides are labelled {labels}"
        )
    return [next(label for label in labels if label != positive_class), positive_class]


class BagDataModule(CacheDataModule[SlideBagDataset | InstanceDataset | BagPieceDataset]):
    """Slides as bags (``features`` from ``medssl embed``, or tile pixels) for slide-level learning.

    Training yields padded batches of bags (at most ``max_instances`` random instances each, a function
    of (``seed``, epoch, slide)); validation and test yield whole bags in pieces of ``piece_size``
    instances (:class:`~medssl.data.bags.BagPieceDataset`), so a bag of any size is scored in bounded
    memory. ``positive_class`` names the slide label that marks a positive slide (``tumor``, ``lesion``);
    the cohort must have exactly two labels, that one and the negative one, or setup refuses it: a
    silent label order would flip every probability and heatmap.
    ``instance_masks`` names a folder of lesion masks (:class:`~medssl.data.truth.LesionMasks`) that
    evaluation alone reads, for instance AUROC; training batches never carry instance truth."""

    def __init__(
        self,
        cache: str,
        positive_class: str,
        features: str | None = None,
        batch_size: int = 1,
        max_instances: int | None = 8192,
        piece_size: int = 8192,
        instance_masks: str | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        self.features, self.max_instances, self.piece_size = features, max_instances, piece_size
        self.positive_class, self.instance_masks = positive_class, instance_masks
        self.classes: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        from medssl.data.truth import LesionMasks

        everything = SlideBagDataset(self.cache, features=self.features)
        self.classes = binary_classes(everything.classes, self.positive_class, self.cache)
        meta = everything.tiles.cache
        available = sorted({str(meta.metadata(s).get("split", "")) for s in everything.slide_ids} - {""})
        truth = LesionMasks(self.instance_masks) if self.instance_masks else None
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            if split is None:
                self.datasets[name] = None
            elif name == "train":
                self.datasets[name] = self._train_dataset(split or None)
            else:
                bags = SlideBagDataset(self.cache, features=self.features, splits=split or None, classes=self.classes)
                self.datasets[name] = BagPieceDataset(bags, self.piece_size, instance_truth=truth)

    def _train_dataset(self, splits: list[str] | None) -> SlideBagDataset | InstanceDataset:
        return SlideBagDataset(
            self.cache,
            features=self.features,
            max_instances=self.max_instances,
            splits=splits,
            classes=self.classes,
            seed=self.seed,
        )

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler([(i, i + 1) for i in range(len(dataset))], seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler, collate_fn=collate_bags)

    def _eval_loader(self, dataset):
        """Whole bags in pieces, in order, one piece per step (``batch_size=None``)."""
        return DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def predict_dataloader(self):
        return self._eval("test")


class InstanceDataModule(BagDataModule):
    """Training on single instances with their slide's label (instance classifiers such as INS);
    validation and test on whole bags as in :class:`BagDataModule`. Embeddings (``features``) or tile
    pixels, which get two histology views of ``view_size``."""

    def __init__(
        self,
        cache: str,
        positive_class: str,
        features: str | None = None,
        batch_size: int = 64,
        view_size: int = 224,
        piece_size: int = 8192,
        instance_masks: str | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
    ):
        super().__init__(
            cache,
            positive_class,
            features,
            batch_size,
            None,
            piece_size,
            instance_masks,
            num_workers,
            seed,
            train_split,
            val_split,
            test_split,
        )
        self.view_size = view_size

    def _train_dataset(self, splits: list[str] | None) -> InstanceDataset:
        transform = None if self.features else MultiViewd([histology_view(self.view_size)] * 2)
        return InstanceDataset(
            self.cache, features=self.features, transform=transform, splits=splits, classes=self.classes, seed=self.seed
        )

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        if not isinstance(dataset, InstanceDataset):  # what _train_dataset builds
            raise TypeError(f"{type(self).__name__} trains on an InstanceDataset, not a {type(dataset).__name__}")
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler)


class StainSetDataModule(CacheDataModule[StainSetDataset]):
    """Cases as sets of stained slides (:class:`~medssl.data.bags.StainSetDataset`) for multistain
    pretraining such as MADELEINE: per case, each stain's patch features (``features``, from
    ``medssl embed``) resampled to ``tokens`` rows, missing stains marked absent. Splits come from the
    cache's ``split`` column, which ``medssl tile`` takes from the cohort CSV; give every slide of a case
    the same split (the synthetic cohorts do), so no case straddles two. Training keeps a short last
    batch: contrastive alignment wants every case, and a cohort may be smaller than one batch (65 cases
    in the paper). Validation cases are served in order, for the validation loss."""

    def __init__(
        self,
        cache: str,
        features: str,
        stains: list[str] | None = None,
        reference_stain: str = "HE",
        tokens: int = 2048,
        min_stains: int = 2,
        batch_size: int = 65,
        num_workers: int | None = None,
        seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        self.features, self.stains, self.reference_stain = features, stains, reference_stain
        self.tokens, self.min_stains = tokens, min_stains

    def setup(self, stage: str | None = None) -> None:
        everything = self._dataset(None)
        self.stains = everything.stains  # one order for every split, the stains of the whole cohort
        cache = everything.bags.tiles.cache
        available = sorted({str(cache.metadata(s).get("split", "")) for s in everything.bags.slide_ids} - {""})
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            self.datasets[name] = None if split is None else self._dataset(split or None)

    def _dataset(self, splits: list[str] | None) -> StainSetDataset:
        return StainSetDataset(
            self.cache,
            self.features,
            stains=self.stains,
            reference_stain=self.reference_stain,
            tokens=self.tokens,
            min_stains=self.min_stains,
            seed=self.seed,
            splits=splits,
        )

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler([(i, i + 1) for i in range(len(dataset))], seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler, collate_fn=collate_stain_sets, drop_last=False)

    def _eval_loader(self, dataset):
        return self._loader(dataset, train=False, collate_fn=collate_stain_sets)
