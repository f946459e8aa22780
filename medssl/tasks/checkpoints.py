"""Rebuild a trained medssl model from its Lightning checkpoint alone, for inference outside training
(``medssl heatmap``, ``medssl segment``).

A checkpoint written by medssl names its model class (``medssl_model``) and its encoders with their
configurations (``medssl_encoders``, the encoder contract of :class:`~medssl.methods.base.MedsslModule`).
The class is rebuilt from its saved hyperparameters, then given the checkpoint's weights. Arguments
that point at *other* files the model started from are not read again: the checkpoint holds the
trained weights, and the start file may be gone or changed since.
"""

from __future__ import annotations

import importlib
import logging
import os
from contextlib import contextmanager
from typing import Any, TypeVar

from medssl.errors import InputError
from medssl.export.encoders import load_checkpoint
from medssl.methods.base import MedsslModule
from medssl.tasks.base import FinetuneTask

Model = TypeVar("Model", bound=MedsslModule)


def load_medssl_model(checkpoint: str | os.PathLike, base: type[Model], what: str) -> Model:
    """The model of a checkpoint written by medssl (read with ``weights_only=True``), in eval mode. Its
    class comes from the checkpoint's ``medssl_model`` entry, must be medssl's own and a subclass of
    ``base``; ``what`` says what was expected, in errors ("a slide model (ABMIL, INS)")."""
    data = load_checkpoint(checkpoint)
    name = str(data.get("medssl_model", ""))
    if not name.startswith("medssl.") or "state_dict" not in data:
        raise InputError(f"{checkpoint}: not a checkpoint of {what}")
    module, _, qualname = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise InputError(f"{checkpoint}: its model {name} does not exist in this medssl version") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InputError(f"{checkpoint}: {name} is not {what}")
    with _quiet_construction():  # a task announces "from random initialisation": true of the skeleton only
        model = cls(**rebuild_arguments(data, cls, checkpoint))
    model.on_load_checkpoint(data)
    model.load_state_dict(data["state_dict"])
    if isinstance(model, FinetuneTask):
        model.encoder_origin = f"the trained weights of {checkpoint}"
    return model.eval()


@contextmanager
def _quiet_construction():
    """Silence Lightning's rank-zero info messages while a model's skeleton is built, before its weights load."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def rebuild_arguments(data: dict[str, Any], cls: type, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The constructor arguments of ``cls`` from a checkpoint's hyperparameters, with every start file
    replaced by what the checkpoint itself records: ``init_checkpoint`` (methods, slide models) is
    dropped; a fine-tuned task's ``encoder`` file becomes a ``backbone`` built from the checkpoint's
    encoder record, whose weights then come from the checkpoint's ``state_dict``."""
    hparams = {k: v for k, v in data.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if "init_checkpoint" in hparams:
        hparams["init_checkpoint"] = None
    if issubclass(cls, FinetuneTask) and hparams.get("encoder") is not None:
        record = (data.get("medssl_encoders") or {}).get("encoder") or {}
        if record.get("config") is None:
            raise InputError(
                f"{checkpoint}: the task's encoder came from {hparams['encoder']}, and the checkpoint records "
                "no encoder configuration to rebuild it without that file (medssl_encoders['encoder'])"
            )
        hparams.update(encoder=None, backbone=dict(record["config"]), random_init=False)
    return hparams


def load_task_model(checkpoint: str | os.PathLike) -> FinetuneTask:
    """A fine-tuned downstream task model (classification, segmentation) from its checkpoint, in eval mode."""
    return load_medssl_model(checkpoint, FinetuneTask, "a medssl downstream task model (medssl.tasks)")
