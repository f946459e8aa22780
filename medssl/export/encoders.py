"""Encoder files: the trained backbone's weights plus what is needed to rebuild and feed it.

``export_encoder`` writes a ``.pt`` file holding only tensors and plain values::

    {"format": "medssl.encoder", "version": 1, "config": {...build_encoder arguments...},
     "state_dict": {...the MONAI network's own keys...}, "out_dim": 512, "input": {...}, ...}

so it loads with ``torch.load(path, weights_only=True)`` into a MONAI network without medssl::

    net = monai.networks.nets.resnet18(spatial_dims=2, n_input_channels=3, feed_forward=False, conv1_t_stride=2)
    net.load_state_dict(torch.load(path, weights_only=True)["state_dict"])

``export_program`` writes a ``torch.export`` program (``.pt2``) that plain PyTorch runs with neither
medssl nor MONAI installed: ``torch.export.load(path).module()(images)``.

Every checkpoint is read with ``weights_only=True``: medssl never unpickles code from a file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

import medssl
from medssl.errors import InputError
from medssl.files import atomic_path
from medssl.nn.backbones import Encoder, build_encoder

ENCODER_FORMAT = "medssl.encoder"
FORMAT_VERSION = 1
INPUT_CONVENTION = {
    "layout": "[B, C, H, W] (2D) or [B, C, D, H, W] (3D)",
    "scaling": "uint8 pixels divided by 255; radiology arrays as cached (normalised float)",
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint or encoder file as tensors and plain containers; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable PyTorch checkpoint (not the zip archive torch.save writes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        reason = f"it would import {found.group(1)}" if found else str(exc).strip().splitlines()[0][:200]
        raise InputError(
            f"{path}: refused: it holds pickled Python objects, not only tensors and plain values ({reason}). "
            "medssl never unpickles code from a checkpoint; re-save its state_dict, or load it with "
            "torch.load(weights_only=False) yourself only if you trust where it came from"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({str(exc).strip().splitlines()[0]})") from None


def encoder_source(path: str | os.PathLike | Encoder, name: str = "encoder") -> dict[str, Any]:
    """The encoder in a Lightning checkpoint of a medssl model or in an encoder file (or an
    :class:`~medssl.nn.backbones.Encoder` in hand, e.g. a random-init baseline), as an encoder-file
    dictionary (``config``, ``state_dict``, ``method``, ``source``).

    A checkpoint names the encoders its model trains (``medssl_encoders``, the contract of
    :meth:`~medssl.methods.base.MedsslModule.encoders`); ``name`` picks one of them."""
    if isinstance(path, Encoder):
        state = {k: v.detach().clone() for k, v in path.network.state_dict().items()}
        return {
            "format": ENCODER_FORMAT,
            "version": FORMAT_VERSION,
            "config": path.config(),
            "state_dict": state,
            "method": "",
            "source": {"in_memory": type(path.network).__name__},
        }
    return _source_of(load_checkpoint(path), path, name)


def _source_of(checkpoint: dict[str, Any], path: str | os.PathLike, name: str) -> dict[str, Any]:
    """:func:`encoder_source` of a checkpoint already read from ``path``."""
    if checkpoint.get("format") == ENCODER_FORMAT:
        if checkpoint.get("version") != FORMAT_VERSION:
            raise InputError(
                f"{path}: encoder file version {checkpoint.get('version')}, this medssl reads version {FORMAT_VERSION}"
            )
        return checkpoint
    if not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise InputError(f"{path}: neither a medssl encoder file nor a Lightning checkpoint of a medssl method")
    hparams = checkpoint["hyper_parameters"]
    prefix, config = _contract_entry(checkpoint, path, name)
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise InputError(f"{path}: the checkpoint has no {prefix}* weights for its encoder {name!r}")
    return {
        "format": ENCODER_FORMAT,
        "version": FORMAT_VERSION,
        "config": build_encoder(**config).config(),  # fills defaults
        "state_dict": state,
        "method": str(hparams.get("_class_path", checkpoint.get("medssl_model", ""))),
        "source": {
            "checkpoint": str(Path(path).resolve()),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "encoder": name,
        },
    }


def _contract_entry(checkpoint: dict, path: str | os.PathLike, name: str) -> tuple[str, dict]:
    """(weight prefix, encoder config) of encoder ``name`` in a checkpoint. Checkpoints written before the
    contract existed hold one encoder under ``encoder.network.`` built from the ``backbone`` argument."""
    records = checkpoint.get("medssl_encoders")
    if records is None:
        if name != "encoder":
            raise InputError(f"{path}: this checkpoint predates named encoders; it holds only 'encoder'")
        return "encoder.network.", dict(checkpoint["hyper_parameters"].get("backbone") or {})
    if name not in records:
        raise InputError(f"{path}: no encoder {name!r}; the model trains {sorted(records) or 'none'}")
    record = records[name]
    if record.get("config") is None:
        raise InputError(
            f"{path}: encoder {name!r} is a {record.get('class')}, not a medssl backbone that an "
            "encoder file can rebuild; load it from the checkpoint's state_dict "
            f"(prefix {record.get('prefix')!r})"
        )
    return str(record["prefix"]), dict(record["config"])


def load_encoder(path: str | os.PathLike, name: str = "encoder") -> Encoder:
    """An :class:`~medssl.nn.backbones.Encoder` from an encoder file or a method checkpoint (its encoder
    ``name``), in eval mode."""
    return build_from_source(encoder_source(path, name), path)


def build_from_source(source: dict, path: str | os.PathLike) -> Encoder:
    """The encoder an encoder-file dictionary describes, with its weights, in eval mode; ``path`` names
    where it came from in errors."""
    encoder = build_encoder(**source["config"])
    missing, unexpected = encoder.network.load_state_dict(source["state_dict"], strict=False)
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not fit a {source['config']['name']} encoder "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return encoder.eval()


def load_encoder_weights(encoder: Encoder, path: str | os.PathLike, name: str = "encoder") -> str:
    """Copy into ``encoder``, in place, the weights of a file: the encoder ``name`` of a medssl method
    checkpoint, a medssl encoder file, or a plain ``state_dict`` of the network saved with
    ``torch.save(network.state_dict())`` (a MONAI network's; a torchvision or timm ResNet's, see
    :func:`adapt_torchvision_resnet`). Strict: every weight of the network must come from the file with
    its shape and nothing in the file may be left over, else :class:`~medssl.errors.InputError` naming
    the file and the keys. The one allowance, as ``torch.nn.BatchNorm`` itself makes: a plain
    state_dict saved without BatchNorm's step counters (``num_batches_tracked``, older files) gets
    zeros. Returns a line saying what was loaded."""
    checkpoint = load_checkpoint(path)
    expected = encoder.network.state_dict()
    if checkpoint and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        state, adapted = adapt_torchvision_resnet(dict(checkpoint), expected)
        counters = [
            k
            for k in expected
            if k.endswith(".num_batches_tracked")
            and k not in state
            and k[: -len("num_batches_tracked")] + "running_mean" in state
        ]
        state.update({k: torch.zeros_like(expected[k]) for k in counters})
        notes = [adapted] if adapted else []
        notes += [f"{len(counters)} BatchNorm step counters missing, set to 0"] if counters else []
        held = "a plain state_dict" + (f" ({'; '.join(notes)})" if notes else "")
    else:
        source = _source_of(checkpoint, path, name)
        state, kind = source["state_dict"], _describe(source["config"])
        is_file = checkpoint.get("format") == ENCODER_FORMAT
        held = f"the medssl encoder file's {kind}" if is_file else f"the checkpoint's encoder {name!r}, a {kind}"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights missing from the file (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} not in the model (e.g. {unexpected[:3]})")
        if shapes:
            problems.append(
                f"{len(shapes)} of other shapes (e.g. "
                + ", ".join(f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}" for k in shapes[:3])
                + ")"
            )
        raise InputError(
            f"{path}: {held} does not fit this model's backbone, a {_describe(encoder.config())}: "
            + "; ".join(problems)
            + ". A plain state_dict must have the network's own keys (no 'module.' or 'model.' prefix)"
        )
    encoder.network.load_state_dict(state, strict=True)
    return f"{path}: {held}"


def adapt_torchvision_resnet(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str]:
    """A torchvision or timm ResNet's ``state_dict`` in MONAI's terms. They name their layers as MONAI
    does but end in an ImageNet classifier (``fc.*``, which a feature encoder lacks) and have no bias in
    their shortcut convolutions (``layerN.0.downsample.0``), where MONAI's has one. The classifier is
    dropped and the missing shortcut biases are zeros: the same function, exactly. Returns the state
    and a note of what changed ("" when nothing did)."""
    dropped = [k for k in state if k.startswith("fc.") and k not in expected]
    zeros = [
        k
        for k in expected
        if k not in state and re.fullmatch(r"layer\d+\.0\.downsample\.0\.bias", k) and k[:-4] + "weight" in state
    ]
    if not dropped and not zeros:
        return state, ""
    state = {k: v for k, v in state.items() if k not in dropped}
    state.update({k: torch.zeros_like(expected[k]) for k in zeros})
    notes = [f"dropped the classifier {dropped}"] if dropped else []
    notes += [f"zero biases for {len(zeros)} shortcut convolutions"] if zeros else []
    return state, "torchvision/timm layout: " + ", ".join(notes)


def _describe(config: dict) -> str:
    if config["name"] == "slice_stack":
        return f"slice_stack (a 3D volume encoder around a {_describe(config['slice_encoder'])})"
    if config["name"] == "swin_unetr":
        channels, size = config["in_channels"], config["feature_size"]
        return f"swin_unetr (3D SwinUNETR, {channels} input channels, feature size {size})"
    return (
        f"{config['name']} ({config['spatial_dims']}D, {config['in_channels']} input channels, "
        f"width {config.get('width', 1.0)})"
    )


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A fingerprint of the weights (names and values), so embeddings know which encoder made them."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def export_encoder(
    source: str | os.PathLike | Encoder, out: str | os.PathLike, name: str = "encoder", **info: Any
) -> Path:
    """Write the encoder ``name`` of ``source`` (checkpoint or encoder file) to ``out``; extra ``info``
    (e.g. the tile MPP it was trained at) is stored under ``"info"``. Written to a temporary name, then
    renamed."""
    data = encoder_source(source, name)
    encoder = build_from_source(data, str(source))
    data.update(
        out_dim=encoder.out_dim,
        input=INPUT_CONVENTION,
        medssl_version=medssl.__version__,
        weights_sha256=weights_sha256(data["state_dict"]),
        info={**data.get("info", {}), **info},
    )
    return _atomic_save(data, Path(out))


def export_program(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spatial_size: int | tuple[int, ...] | None = None,
    name: str = "encoder",
) -> Path:
    """Write a ``torch.export`` program of the encoder ``name`` (eval mode, any batch size) for plain
    PyTorch. ``spatial_size`` is the example input's size (default: the encoder's ``img_size``)."""
    encoder = load_encoder(source, name)
    config = encoder.config()
    size = spatial_size or config.get("img_size")
    if size is None:
        raise InputError(
            f"{source}: a {config['name']} encoder has no fixed input size; "
            "give an example size (medssl export --size D H W)"
        )
    size = (size,) * config["spatial_dims"] if isinstance(size, int) else tuple(size)
    example = torch.rand(2, config["in_channels"], *size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
    with atomic_path(out) as temporary:
        torch.export.save(program, temporary)
    return Path(out)


def _atomic_save(data: dict, out: Path) -> Path:
    with atomic_path(out) as temporary:
        torch.save(data, temporary)
    return out
