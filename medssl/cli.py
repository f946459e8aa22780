"""The ``medssl`` command line: one subcommand per step from raw slides/volumes to results.

``COMMANDS`` lists every subcommand with its purpose and an example; it drives ``medssl --help`` and
``command_help``, which the docs use to print the reference. fit/validate/test/predict go to LightningCLI
before argparse sees them (they take any config key as a flag), the others are argparse subcommands.

Exit status: 0 when everything succeeded, 1 when some inputs failed (the others finished and the
manifest says why), 2 on a usage or configuration error before any work started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medssl.errors import MedsslError


@dataclass(frozen=True)
class Command:
    """One subcommand as ``medssl --help`` and the docs show it: what it is for, and a line to start from."""

    name: str
    purpose: str
    example: str


COMMANDS: tuple[Command, ...] = (
    Command(
        "tile",
        "tile whole-slide images into a Zarr cache",
        "medssl tile /data/slides/ --out /data/cohort --mpp 0.5 --tile-size 224 --workers 8",
    ),
    Command(
        "cache-volumes",
        "preprocess CT/MRI volumes into a Zarr cache",
        "medssl cache-volumes /data/ct/ --out /data/ct-cache --modality CT --workers 4",
    ),
    Command("info", "summarise a medssl cache", "medssl info /data/cohort"),
    Command(
        "fit",
        "pretrain, fine-tune or train a slide model from a YAML config",
        "medssl fit --config configs/pretrain/simclr_tiles.yaml --data.init_args.cache /data/cohort",
    ),
    Command(
        "validate",
        "run a config's validation loop on a checkpoint",
        "medssl validate --config configs/finetune/classification/tiles.yaml "
        "--ckpt_path runs/finetune-tiles/.../epoch=19-step=2000.ckpt",
    ),
    Command(
        "test",
        "evaluate a checkpoint on the test split of a config's data",
        "medssl test --config configs/finetune/segmentation_2d/unet_slices.yaml "
        "--ckpt_path runs/segmentation-2d-unet/.../epoch=49-step=5000.ckpt",
    ),
    Command(
        "predict",
        "run Lightning's predict loop on a checkpoint (outputs need a writer callback)",
        "medssl predict --config configs/mil/abmil.yaml --ckpt_path runs/abmil/.../epoch=49-step=5000.ckpt",
    ),
    Command(
        "embed",
        "embed every tile or axial slice of a cache with a trained encoder",
        "medssl embed runs/swav-tiles/.../epoch=99.ckpt --cache /data/cohort --out /data/cohort-swav",
    ),
    Command(
        "embed-slides",
        "one embedding per slide from a trained slide encoder (MADELEINE)",
        "medssl embed-slides runs/madeleine/.../rankme-best.ckpt --cache /data/cohort "
        "--features /data/cohort-swav --out /data/slides",
    ),
    Command(
        "export",
        "export a checkpoint's encoder for MONAI or plain PyTorch",
        "medssl export runs/swav-tiles/.../epoch=99.ckpt --out encoder.pt",
    ),
    Command(
        "export-h5",
        "a tile cache's coordinates or embeddings as CLAM/TRIDENT HDF5 files",
        "medssl export-h5 /data/cohort --embeddings /data/cohort-swav --out clam/ --pt",
    ),
    Command(
        "heatmap",
        "draw a slide model's instance scores over slide thumbnails",
        "medssl heatmap runs/ins/.../epoch=149-step=15000.ckpt --cache /data/cohort --features /data/cohort-swav "
        "--out maps/",
    ),
    Command(
        "segment",
        "segment cached volumes; NIfTI predictions in the original geometry",
        "medssl segment runs/segmentation-3d-unet/.../epoch=99-step=9900.ckpt --cache /data/ct-cache "
        "--out predictions/",
    ),
    Command(
        "probe",
        "linear and kNN probes and few-shot on embeddings",
        "medssl probe /data/cohort-swav --cache /data/cohort --out runs/probe-swav",
    ),
)

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

_DESCRIPTION = (
    "medssl: self-supervised foundation models for radiology and computational pathology, from raw "
    "slides and CT/MRI volumes to embeddings, fine-tuned models and predictions."
)

_EPILOG_END = (
    "Run 'medssl COMMAND --help' for a command's options. fit, validate, test and predict are LightningCLI: "
    "every key of the YAML config is also a flag (--trainer.devices 8) or an environment variable "
    "(MEDSSL_FIT__TRAINER__MAX_EPOCHS=10).\n\n"
    "Exit status: 0 when everything succeeded, 1 when some inputs failed (the others finished and the "
    "manifest says why), 2 on a usage or configuration error before any work started."
)


def _command(name: str) -> Command:
    """The table entry of a subcommand; an unknown name is an error that lists the known ones."""
    for command in COMMANDS:
        if command.name == name:
            return command
    raise ValueError(f"medssl has no command {name!r}; the commands are {', '.join(c.name for c in COMMANDS)}")


def _examples(commands: Sequence[Command], heading: str = "examples:") -> str:
    """The examples epilog section: each command's example, indented, long ones on continuation lines."""
    return heading + "".join(f"\n  {line}" for command in commands for line in _shell_lines(command.example))


def _shell_lines(command: str, width: int = 88) -> list[str]:
    """A long command line as shell continuation lines, broken before options, so that it stays copyable."""
    words = re.split(r" (?=--)", command)
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + len(word) + 3 > width:  # " " + word + " \\"
            lines[-1] += " \\"
            lines.append(f"    {word}")
        else:
            lines[-1] += f" {word}"
    return lines


_RST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`")  # :class:`~a.B` -> B, :meth:`a.b` -> a.b
_RST_LINK = re.compile(r"`([^`<]+?)\s*<([^>`]+)>`__?")  # `text <url>`_ -> text (url)
_RST_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")  # ``x`` and `x` -> x


def _plain_text(text: str) -> str:
    """reStructuredText inline markup (roles, literals, links) as plain text: Lightning's docstrings are
    its options' help, and a terminal would show the backticks and :class: verbatim."""
    text = _RST_ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], text)
    text = _RST_LINK.sub(r"\1 (\2)", text)
    return _RST_LITERAL.sub(lambda m: m[1] or m[2], text)


def _is_verbatim(paragraph: str) -> bool:
    """A paragraph whose lines after the first are indented (``examples:`` and its command lines)."""
    lines = paragraph.splitlines()
    return len(lines) > 1 and all(line.startswith("  ") for line in lines[1:])


def _help_formatter(base: type[argparse.HelpFormatter]) -> type[argparse.HelpFormatter]:
    """``base`` (argparse's or jsonargparse's) writing plain text: markup removed before wrapping,
    indented paragraphs (example command lines) kept as written so that they can be copied, and the
    commands listed one per line under ``commands:`` without argparse's ``COMMAND`` line above them."""

    class HelpFormatter(base):
        def _split_lines(self, text: str, width: int) -> list[str]:
            return super()._split_lines(_plain_text(text), width)

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            fill = super()._fill_text
            return "\n\n".join(
                "\n".join(indent + line for line in p.splitlines())
                if _is_verbatim(p)
                else fill(_plain_text(p), width, indent)
                for p in text.split("\n\n")
            )

        def _format_action(self, action: argparse.Action) -> str:
            if isinstance(action, argparse._SubParsersAction):
                return "".join(self._format_action(command) for command in action._get_subactions())
            return super()._format_action(action)

    return HelpFormatter


class _HelpFormatter(_help_formatter(argparse.ArgumentDefaultsHelpFormatter)):
    """argparse's defaults in the help, where there is one to show and the help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "[default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _add_parser(sub: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    """A subcommand parser whose listing line is its purpose in ``COMMANDS`` and whose help ends with its example."""
    command = _command(name)
    return sub.add_parser(
        name,
        help=command.purpose,
        description=description,
        epilog=_examples([command], heading="example:"),
        formatter_class=_HelpFormatter,
    )


def _preprocess_parser(sub: argparse._SubParsersAction, name: str, description: str, inputs: str):
    """A preprocessing subcommand with the inputs, --out and the running options every one shares."""
    p = _add_parser(sub, name, description)
    p.add_argument("inputs", nargs="+", help=inputs)
    p.add_argument("--out", required=True, help="cache folder (holds cache.zarr, manifest.csv, qc/)")
    r = p.add_argument_group("running")
    r.add_argument("--workers", type=int, default=1, help="items processed in parallel (processes)")
    r.add_argument("--shard", help="i/n: process only shard i of n (for cluster job arrays)")
    r.add_argument("--overwrite", action="store_true", help="rebuild a cache made with other parameters")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p, r


def _add_tile_parser(sub: argparse._SubParsersAction) -> None:
    p, running = _preprocess_parser(
        sub,
        "tile",
        "Tile slides (files, folders, globs or a CSV manifest with slide_id,path[,label,stain,mpp]) "
        "into one resumable Zarr cache at a target physical resolution. A folder of DICOM instances is one "
        "slide per Series Instance UID.",
        "slide files, folders, glob patterns or CSV manifests",
    )
    running.add_argument("--threads", type=int, default=2, help="read/decode threads per slide")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=float, help="target microns per pixel [default: 0.5]")
    res.add_argument("--magnification", type=float, help="target magnification, converted as 10/M µm/px")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in target pixels")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--overlap", type=int, default=0, help="overlap between neighbouring tiles, target px")
    step.add_argument("--stride", type=int, help="distance between tile origins, target px")
    p.add_argument("--min-tissue", type=float, default=0.5, help="keep tiles with at least this tissue fraction")
    p.add_argument("--resample", default="box", help="resize filter: box (area), nearest, bilinear, bicubic, lanczos")
    p.add_argument(
        "--assume-mpp", type=float, help="MPP for slides whose metadata has none (or a placeholder such as 72 dpi)"
    )
    t = p.add_argument_group("tissue detection (HSV saturation on a thumbnail; marker ink is not tissue)")
    t.add_argument("--mask-mpp", type=float, default=8.0, help="thumbnail resolution for the mask, µm/px")
    t.add_argument("--saturation-threshold", type=float, help="fixed threshold 0..255 instead of Otsu")
    t.add_argument("--min-saturation", type=float, default=15.0, help="floor under Otsu's threshold, 0..255")
    t.add_argument("--max-brightness", type=float, default=250.0, help="brighter pixels are background")
    t.add_argument("--blur", type=int, default=5, help="median filter width, mask px (0 = off)")
    t.add_argument("--close", type=int, default=4, help="closing radius, mask px (0 = off)")
    t.add_argument("--no-fill-holes", action="store_true", help="keep holes inside tissue as background")
    t.add_argument("--min-area", type=float, default=20000.0, help="drop tissue pieces smaller than this, µm²")
    t.add_argument(
        "--pen-ink",
        default="green,blue,black",
        help="marker ink colours excluded from tissue (green, blue, black, red), comma-separated; "
        "'off' keeps ink as tissue (for trichrome and other stains with green/blue dyes)",
    )
    t.add_argument(
        "--pen-min-saturation", type=float, default=100.0, help="coloured ink: HSV saturation ≥ this, 0..255"
    )
    t.add_argument("--pen-black-value", type=float, default=50.0, help="black ink: brightest channel ≤ this, 0..255")
    t.add_argument("--pen-grow", type=int, default=2, help="grow the ink mask by this radius, mask px")
    s = p.add_argument_group("storage")
    s.add_argument("--codec", default="raw", choices=("raw", "zstd", "lz4", "jpeg"), help="tile pixel codec")
    s.add_argument("--jpeg-quality", type=int, default=90)
    s.add_argument("--chunk-tiles", type=int, default=32, help="tiles per chunk (per shard with jpeg)")
    g = p.add_argument_group("placement (docs/interop.md)")
    g.add_argument("--coords", help="folder of CLAM/TRIDENT <slide_id>.h5: tile exactly those coordinates")
    g.add_argument("--annotations", help="folder of QuPath GeoJSON <slide_id>.geojson (or a CSV 'annotation' column)")
    g.add_argument("--annotation-mode", default="include", choices=("include", "exclude"))
    g.add_argument("--annotation-class", action="append", help="only annotations of this class (repeatable)")
    p.set_defaults(func=_run_tile)


def _run_tile(args: argparse.Namespace) -> int:
    from medssl.jobs import parse_shard
    from medssl.preprocess import RegionParams, StorageParams, TilingParams, TissueParams, tile_slides
    from medssl.preprocess.slides import magnification_to_mpp

    target = magnification_to_mpp(args.magnification) if args.magnification else (args.mpp or 0.5)
    stride = args.stride or (args.tile_size - args.overlap if args.overlap else None)
    try:
        params = TilingParams(
            target_mpp=target,
            tile_size=args.tile_size,
            stride=stride,
            min_tissue=args.min_tissue,
            resample=args.resample,
            tissue=TissueParams(
                mask_mpp=args.mask_mpp,
                saturation_threshold=args.saturation_threshold,
                min_saturation=args.min_saturation,
                max_brightness=args.max_brightness,
                blur_px=args.blur,
                close_px=args.close,
                fill_holes=not args.no_fill_holes,
                min_area_um2=args.min_area,
                pen_ink=_pen_colours(args.pen_ink),
                pen_min_saturation=args.pen_min_saturation,
                pen_black_max_value=args.pen_black_value,
                pen_grow_px=args.pen_grow,
            ),
        )
        storage = StorageParams(codec=args.codec, jpeg_quality=args.jpeg_quality, chunk_tiles=args.chunk_tiles)
        regions = RegionParams(
            coords_dir=args.coords,
            annotations_dir=args.annotations,
            annotation_mode=args.annotation_mode,
            annotation_classes=tuple(args.annotation_class or ()),
        )
    except ValueError as exc:
        raise MedsslError(f"medssl tile: {exc}") from None
    summary = tile_slides(
        args.inputs,
        args.out,
        params,
        storage,
        assume_mpp=args.assume_mpp,
        workers=args.workers,
        threads=args.threads,
        shard=parse_shard(args.shard),
        overwrite=args.overwrite,
        progress=not args.quiet,
        regions=regions,
    )
    return _report(summary, "tiled", f"{summary.tiles} tiles at {target:g} µm/px")


def _pen_colours(text: str) -> tuple[str, ...]:
    """'green, blue' -> ('green', 'blue'); 'off' (or 'none', '') -> ()."""
    colours = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    return () if colours in ((), ("off",), ("none",)) else colours


def _report(summary, verb: str, detail: str) -> int:
    """Print what a preprocessing run did and where its outputs are; exit status 1 if anything failed."""
    where = f"cache:    {summary.out / 'cache.zarr'}\nmanifest: {summary.manifest}\nqc:       {summary.out / 'qc'}"
    return _report_run(summary, verb, f"; {detail}", where)


def _report_run(summary, verb: str, detail: str, where: str) -> int:
    """Print ``<done> <verb>, <skipped> already complete, <failed> failed<detail>``, then ``where`` the
    outputs are and each failure with its reason; exit status 1 if anything failed."""
    counts = summary.counts()
    # skipped for another reason than being complete already (e.g. a DICOM object that is not an image)
    passed = [r for r in summary.results if r.status == "skipped" and r.reason not in ("", "already complete")]
    complete = f"{counts['skipped'] - len(passed)} already complete" + (f", {len(passed)} skipped" if passed else "")
    print(f"{counts['done']} {verb}, {complete}, {counts['failed']} failed{detail}\n{where}")
    for result in passed:
        print(f"  skipped {result.item_id}: {result.reason}", file=sys.stderr)
    for result in summary.failed:
        print(f"  failed {result.item_id}: {result.reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _add_volumes_parser(sub: argparse._SubParsersAction) -> None:
    p, _ = _preprocess_parser(
        sub,
        "cache-volumes",
        "Orient (RAS), resample, crop and normalise NIfTI files or DICOM series (files, folders, "
        "globs or a CSV manifest with volume_id,image[,label,modality,split]) into one resumable Zarr cache. "
        "DICOM folders are split by SeriesInstanceUID (one volume per series); non-image objects (RT Dose, "
        "RT Structure Set, SR, SEG, ...) and single-image series are reported and left out. A label may be "
        "NIfTI, or a DICOM SEG or RT Structure Set of the image series (docs/cache.md).",
        "NIfTI files, DICOM series folders, folders, globs or CSV manifests",
    )
    p.add_argument(
        "--modality",
        choices=("CT", "MR"),
        help="for inputs that do not say (NIfTI) and have no CSV 'modality' column; DICOM series use their "
        "Modality tag, and a contradicting value fails that item",
    )
    p.add_argument(
        "--label-map",
        action="append",
        metavar="NAME=VALUE",
        help="DICOM SEG/RTSTRUCT labels: the label value of a segment/ROI name, repeatable (case-insensitive; "
        "others left out; the larger value wins on overlap); without it each keeps its SegmentNumber/ROINumber",
    )
    p.add_argument(
        "--allow-single-slice",
        action="store_true",
        help="cache single-image DICOM series as one-slice volumes (and plan with them) instead of skipping them",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="target spacing in mm [default: cohort median, nnU-Net's anisotropy rule]",
    )
    p.add_argument(
        "--ct-norm",
        default="cohort",
        choices=("cohort", "window"),
        help="CT: clip to cohort foreground 0.5/99.5 pct + z-score, or a fixed window scaled to 0..1",
    )
    p.add_argument("--ct-window", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH"))
    p.add_argument("--ct-foreground-hu", type=float, default=-500.0, help="CT body threshold for cropping")
    p.add_argument("--no-crop", action="store_true", help="keep the whole field of view")
    p.add_argument("--frame", type=int, help="frame/channel to keep from 4D inputs (4D is an error otherwise)")
    p.add_argument("--interpolation", default="bilinear", choices=("bilinear", "nearest", "bicubic"))
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--codec", default="raw", choices=("raw", "zstd"), help="raw is memory-mapped when read")
    p.set_defaults(func=_run_volumes)


def _run_volumes(args: argparse.Namespace) -> int:
    from medssl.jobs import parse_shard
    from medssl.preprocess import VolumeParams, cache_volumes
    from medssl.preprocess.dicom_labels import parse_label_map

    try:
        params = VolumeParams(
            label_map=parse_label_map(args.label_map or []),
            allow_single_slice=args.allow_single_slice,
            spacing=tuple(args.spacing) if args.spacing else None,
            ct_norm=args.ct_norm,
            ct_window=tuple(args.ct_window),
            ct_foreground_hu=args.ct_foreground_hu,
            crop_foreground=not args.no_crop,
            frame=args.frame,
            interpolation=args.interpolation,
            dtype=args.dtype,
            codec=args.codec,
        )
    except ValueError as exc:
        raise MedsslError(f"medssl cache-volumes: {exc}") from None
    summary = cache_volumes(
        args.inputs,
        args.out,
        params,
        modality=args.modality,
        workers=args.workers,
        shard=parse_shard(args.shard),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    spacing = ", ".join(f"{v:.3g}" for v in summary.plan.spacing)
    return _report(summary, "cached", f"spacing ({spacing}) mm")


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = _add_parser(
        sub, "info", "Print a tile, volume or embedding cache's parameters and one line per slide, volume or item."
    )
    p.add_argument("cache", help="cache folder or .zarr store")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from medssl.cache import EmbeddingCache, SlideCache, VolumeCache, store_path, stored_params

    if all(stored_params(args.cache, kind) is None for kind in ("slides", "volumes", "embeddings")):
        SlideCache(args.cache)  # raises the reader's clear error for a path that is not a cache
    if stored_params(args.cache, "slides") is not None:
        cache = SlideCache(args.cache)
        print(f"{cache.path}: schema v{cache.meta['schema_version']}, written by medssl {cache.meta['medssl_version']}")
        print("slide parameters:", json.dumps(cache.params, indent=2))
        total = 0
        items = cache.items()  # one scan of the store: fast at 10,000 slides
        for slide_id, meta in items.items():
            total += meta["num_tiles"]
            print(
                f"  {slide_id}: {meta['num_tiles']} tiles, level {meta['read_level']} "
                f"(scale {meta['scale']:.3g}), source {meta['mpp']:.4g} µm/px ({meta['mpp_source']})"
            )
        print(f"{len(items)} slides, {total} tiles")
    if stored_params(args.cache, "volumes") is not None:
        volumes = VolumeCache(args.cache)
        print(f"{store_path(args.cache)}: volume parameters:", json.dumps(volumes.params, indent=2))
        for volume_id, meta in volumes.items().items():
            label = "with label" if meta.get("labels") is not None else "no label"
            print(f"  {volume_id}: {meta['modality']}, [Z, Y, X] = {meta['shape']}, {label}")
        print(f"{len(volumes)} volumes")
    if stored_params(args.cache, "embeddings") is not None:
        embeddings = EmbeddingCache(args.cache)
        print(f"{store_path(args.cache)}: embedding parameters:", json.dumps(embeddings.params, indent=2))
        for item, meta in embeddings.items().items():
            maps = meta.get("dense")  # medssl embed --dense: maps per level, not rows
            what = maps or "{} rows × {}".format(*embeddings.features(item).shape)
            print(f"  {item}: {what}")
        print(f"{len(embeddings.items())} items")
    return 0


def _checkpoint_parser(sub: argparse._SubParsersAction, name: str, description: str, checkpoint: str):
    """A subcommand that starts from a trained model: its checkpoint is the positional argument."""
    p = _add_parser(sub, name, description)
    p.add_argument("checkpoint", help=checkpoint)
    return p


def _add_embed_parser(sub: argparse._SubParsersAction) -> None:
    p = _checkpoint_parser(
        sub,
        "embed",
        "Run the encoder of a method checkpoint or encoder file over a tile or volume cache and write features "
        "aligned with the tile/slice index, one resumable Zarr item per slide or volume.",
        "Lightning checkpoint of a medssl method, or an encoder file (medssl export)",
    )
    p.add_argument("--cache", required=True, help="tile or volume cache folder")
    p.add_argument("--out", required=True, help="embedding folder (holds cache.zarr, encoder.pt, manifest.csv)")
    p.add_argument("--encoder", default="encoder", help="which of the checkpoint's encoders (its model's encoders())")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype", choices=("float32", "float16"), help="stored feature type (default: float32; float16 with --dense)"
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="volume caches, encoders with dense maps (swin_unetr, e.g. Alice): store each volume's coarse "
        "(stride 16) and fine (stride 4) L2-normalised maps instead of per-slice features (docs/methods/alice.md)",
    )
    p.add_argument("--threads", type=int, default=2, help="tile reading threads")
    p.add_argument("--shard", help="i/n: embed only shard i of n items (one GPU each)")
    p.add_argument("--overwrite", action="store_true", help="replace embeddings made by another encoder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from medssl.export import embed_cache
    from medssl.jobs import parse_shard

    summary = embed_cache(
        args.checkpoint,
        args.cache,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        shard=parse_shard(args.shard),
        overwrite=args.overwrite,
        progress=not args.quiet,
        encoder_name=args.encoder,
        dense=args.dense,
    )
    where = f"embeddings: {summary.out / 'cache.zarr'}\nencoder:    {summary.encoder}\nmanifest:   {summary.manifest}"
    return _report_run(summary, "embedded", "", where)


def _add_embed_slides_parser(sub: argparse._SubParsersAction) -> None:
    p = _checkpoint_parser(
        sub,
        "embed-slides",
        "Pool every patch feature of each slide (medssl embed) with the slide encoder of a MADELEINE checkpoint "
        "into one slide embedding, one resumable Zarr item per slide; medssl probe --level slide reads them.",
        "Lightning checkpoint of a MADELEINE run (e.g. its rankme-best.ckpt)",
    )
    p.add_argument("--cache", required=True, help="tile cache folder (slide metadata: stain, label, split, case_id)")
    p.add_argument("--features", required=True, help="patch features of that cache (medssl embed --out)")
    p.add_argument("--out", required=True, help="slide-embedding folder (holds cache.zarr, manifest.csv)")
    p.add_argument("--stain", action="append", help="embed slides of this stain (repeatable) [default: H&E only]")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--shard", help="i/n: embed only shard i of n slides")
    p.add_argument("--overwrite", action="store_true", help="replace slide embeddings made by another checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_embed_slides)


def _run_embed_slides(args: argparse.Namespace) -> int:
    from medssl.jobs import parse_shard
    from medssl.tasks.slide_embeddings import embed_slides

    summary = embed_slides(
        args.checkpoint,
        args.cache,
        args.features,
        args.out,
        stains=args.stain,
        device=args.device,
        shard=parse_shard(args.shard),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    where = f"slide embeddings: {summary.out / 'cache.zarr'}\nmanifest: {summary.manifest}"
    return _report_run(summary, f"slides embedded ({summary.dim}-d)", "", where)


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = _checkpoint_parser(
        sub,
        "export",
        "Write the encoder of a method checkpoint as weights plus its configuration (.pt, loads with "
        "torch.load(weights_only=True) into the MONAI network) or as a torch.export program (.pt2, runs with "
        "plain PyTorch: torch.export.load(path).module()).",
        "Lightning checkpoint of a medssl method, or an encoder file",
    )
    p.add_argument("--out", required=True, help="output file: .pt (weights) or .pt2 (torch.export program)")
    p.add_argument("--size", type=int, nargs="+", help="example input size for .pt2 [default: the encoder's img_size]")
    p.add_argument("--encoder", default="encoder", help="which of the checkpoint's encoders (its model's encoders())")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from medssl.export import export_encoder, export_program

    if args.out.endswith(".pt2"):
        out = export_program(args.checkpoint, args.out, tuple(args.size) if args.size else None, name=args.encoder)
    else:
        out = export_encoder(args.checkpoint, args.out, name=args.encoder)
    print(f"encoder written to {out}")
    return 0


def _add_export_h5_parser(sub: argparse._SubParsersAction) -> None:
    p = _add_parser(
        sub,
        "export-h5",
        "One HDF5 file per slide for CLAM/TRIDENT-style pipelines: OUT/<slide_id>.h5 with the tiles' "
        "level-0 coords, or with --embeddings OUT/h5_files/<slide_id>.h5 with features and coords (and "
        "OUT/pt_files/<slide_id>.pt with --pt); plus OUT/slides.csv. Mapping of attributes: docs/interop.md.",
    )
    p.add_argument("cache", help="tile cache folder (medssl tile --out)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--embeddings", help="embedding folder made from this cache (medssl embed --out)")
    p.add_argument(
        "--style",
        default="trident",
        choices=("trident", "clam"),
        help="trident: patch_size at the target MPP; clam: patch_size in level-0 pixels at patch_level 0",
    )
    p.add_argument("--pt", action="store_true", help="with --embeddings: also CLAM's pt_files/<slide_id>.pt")
    p.add_argument("--slides", nargs="+", help="only these slide ids")
    p.set_defaults(func=_run_export_h5)


def _run_export_h5(args: argparse.Namespace) -> int:
    from medssl.export.h5 import export_h5

    result = export_h5(args.cache, args.out, args.embeddings, style=args.style, pt=args.pt, slide_ids=args.slides)
    what = "features" if args.embeddings else "coordinates"
    print(f"{len(result.files)} {what} files ({args.style} style) in {result.out}\nslides: {result.slides_csv}")
    return 0


def _add_heatmap_parser(sub: argparse._SubParsersAction) -> None:
    p = _checkpoint_parser(
        sub,
        "heatmap",
        "Score whole slides with an ABMIL or INS checkpoint, piece by piece, and write one PNG per slide "
        "(attention or instance probability over the thumbnail), per-tile scores as CSV, and slides.csv.",
        "Lightning checkpoint of an ABMIL or INS run",
    )
    p.add_argument("--cache", required=True, help="the tile cache the slides are in")
    p.add_argument("--features", help="embedding folder (medssl embed) for models trained on embeddings")
    p.add_argument("--out", required=True, help="folder for <slide_id>.png, scores/<slide_id>.csv, slides.csv")
    p.add_argument("--split", nargs="+", help="only slides of these splits")
    p.add_argument("--slides", nargs="+", help="only these slide ids")
    p.add_argument("--piece-size", type=int, default=8192, help="instances scored at a time (bounds memory)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--stretch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="colours from each slide's lowest to highest score [default: on for attention, off for probabilities]",
    )
    p.set_defaults(func=_run_heatmap)


def _run_heatmap(args: argparse.Namespace) -> int:
    from medssl.tasks.slide_inference import write_slide_heatmaps

    out = write_slide_heatmaps(
        args.checkpoint,
        args.cache,
        args.out,
        features=args.features,
        slide_ids=args.slides,
        splits=args.split,
        piece_size=args.piece_size,
        device=args.device,
        stretch=args.stretch,
    )
    print(f"heatmaps: {out}/*.png\nscores:   {out / 'scores'}\nslides:   {out / 'slides.csv'}")
    return 0


def _add_segment_parser(sub: argparse._SubParsersAction) -> None:
    p = _checkpoint_parser(
        sub,
        "segment",
        "Predict a label map for each volume of a volume cache with a segmentation checkpoint, and write it as "
        "<out>/<volume_id>.nii.gz in the original file's geometry (the cache's crop, resampling and orientation "
        "undone), with per-case Dice where the cache holds labels. Resumable: complete cases are skipped.",
        "Lightning checkpoint of a medssl segmentation task",
    )
    p.add_argument("--cache", required=True, help="the volume cache (medssl cache-volumes) to predict")
    p.add_argument("--out", required=True, help="folder for <volume_id>.nii.gz, cases/, metrics.csv, manifest.csv")
    p.add_argument("--split", nargs="+", help="only volumes of these splits [default: all]")
    p.add_argument("--volumes", nargs="+", help="only these volume ids")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already complete")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from medssl.tasks.predict_volumes import segment_from_checkpoint

    summary = segment_from_checkpoint(
        args.checkpoint,
        args.cache,
        args.out,
        volume_ids=args.volumes,
        splits=args.split,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
    )
    dice = ", ".join(f"class {label}: {value:.3f}" for label, value in summary.mean_dice().items())
    where = (
        f"predictions: {summary.out}/<volume_id>.nii.gz (original geometry)\n"
        f"metrics:     {summary.metrics or 'none (the cache has no labels for these volumes)'}"
        + (f" (mean Dice {dice})" if dice else "")
        + f"\nmanifest:    {summary.manifest}"
    )
    return _report_run(summary, "predicted", "", where)


def _add_probe_parser(sub: argparse._SubParsersAction) -> None:
    p = _add_parser(
        sub,
        "probe",
        "Train logistic-regression and kNN probes on the train split of an embedding folder and "
        "report balanced accuracy, macro AUROC and macro F1 on its test split (val when there is none), plus "
        "few-shot: k labelled samples per class, one seeded draw per fold (seed = fold), mean ± std. Writes "
        "results.json and few_shot.csv.",
    )
    p.add_argument("features", help="embedding folder written by medssl embed")
    p.add_argument("--cache", required=True, help="the tile or volume cache the embeddings were made from")
    p.add_argument("--out", required=True, help="folder for results.json and few_shot.csv")
    p.add_argument(
        "--labels",
        help="CSV with slide_id (or volume_id) and label columns; tile, slice or index for per-row labels; "
        "split to override the cache's splits [default: labels and splits from the cache]",
    )
    p.add_argument("--label-column", default="label", help="the CSV's class column")
    p.add_argument(
        "--level",
        default="slide",
        choices=("slide", "volume", "tile", "slice"),
        help="one sample per slide/volume (mean of its embeddings) or per tile/slice",
    )
    p.add_argument("--classes", nargs="+", help="class names, in index order [default: the labels found]")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 10, 25], help="few-shot k per class")
    p.add_argument("--folds", type=int, default=10, help="few-shot folds (fold f draws with seed f)")
    p.add_argument(
        "--probe",
        default="both",
        choices=("linear", "knn", "both", "logistic"),
        help="both: linear and knn; logistic: scikit-learn's LogisticRegression(C=1) on raw features",
    )
    p.add_argument("--stain", action="append", help="probe only slides of this stain (repeatable), e.g. HE")
    p.add_argument(
        "--l2", type=float, help="logistic-regression L2 [default: chosen on val when there is a test split, else 1e-3]"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the case-level split when the cache has none")
    p.add_argument("--device", default="cpu", help="where the probes run: cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    from medssl.tasks.probes import format_table, probe_embeddings

    results = probe_embeddings(
        args.features,
        args.cache,
        args.out,
        labels_csv=args.labels,
        level=args.level,
        label_column=args.label_column,
        classes=args.classes,
        shots=args.shots,
        folds=args.folds,
        probes=("linear", "knn") if args.probe == "both" else (args.probe,),
        stains=args.stain,
        l2=args.l2,
        split_seed=args.split_seed,
        device=args.device,
    )
    print(format_table(results))
    print(f"results: {args.out}/results.json\nfew-shot: {args.out}/few_shot.csv")
    return 0


_ADD_PARSER = {
    "tile": _add_tile_parser,
    "cache-volumes": _add_volumes_parser,
    "info": _add_info_parser,
    "embed": _add_embed_parser,
    "embed-slides": _add_embed_slides_parser,
    "export": _add_export_parser,
    "export-h5": _add_export_h5_parser,
    "heatmap": _add_heatmap_parser,
    "segment": _add_segment_parser,
    "probe": _add_probe_parser,
}


def _add_lightning_parser(sub: argparse._SubParsersAction, name: str) -> None:
    """A LightningCLI subcommand in the listing only: ``main`` hands its arguments to LightningCLI before
    argparse parses, so every config key stays a flag (``medssl fit --help`` shows them)."""
    p = sub.add_parser(name, help=_command(name).purpose, add_help=False)
    p.set_defaults(func=_run_lightning_command)


def _run_lightning_command(args: argparse.Namespace) -> int:
    run_lightning([args.command])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: every command of ``COMMANDS`` in its order, with the examples as epilog."""
    parser = argparse.ArgumentParser(
        prog="medssl",
        description=_DESCRIPTION,
        epilog=f"{_examples(COMMANDS)}\n\n{_EPILOG_END}",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command in COMMANDS:
        if command.name in LIGHTNING_COMMANDS:
            _add_lightning_parser(sub, command.name)
        else:
            _ADD_PARSER[command.name](sub)
    return parser


def _shards_data_itself(data) -> bool:
    """Whether a DataModule config (``class_path`` + ``init_args``) selects a DataModule whose training
    sampler splits the data across DDP ranks itself (``uses_medssl_sampler``, set by medssl's
    :class:`~medssl.data.datamodules.CacheDataModule`)."""
    import importlib

    class_path = getattr(data, "class_path", None) if data is not None else None
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    return bool(getattr(getattr(importlib.import_module(module), name, None), "uses_medssl_sampler", False))


def _medssl_cli() -> type:
    """medssl's LightningCLI (built in a function: Lightning is imported only when a Lightning command runs)."""
    from jsonargparse import Namespace
    from lightning.pytorch.cli import LightningCLI

    class MedsslCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            """medssl DataModules shard across DDP ranks with their own sampler, so Lightning must not
            replace it: ``use_distributed_sampler`` is forced off for them (the saved config says so).

            Unless a config names its loggers, log to TensorBoard (``lightning_logs/``, where checkpoints
            go too) and CSV (``csv_logs/``) under ``default_root_dir``: curves to look at, a table for pandas."""
            config = self.config[self.subcommand] if self.subcommand else self.config
            trainer = config.trainer
            if _shards_data_itself(config.get("data")):
                trainer.use_distributed_sampler = False
            if trainer.logger in (None, True):
                root = trainer.default_root_dir or "."
                trainer.logger = [
                    Namespace(
                        class_path=f"lightning.pytorch.loggers.{kind}", init_args=Namespace(save_dir=root, name=name)
                    )
                    for kind, name in (("TensorBoardLogger", "lightning_logs"), ("CSVLogger", "csv_logs"))
                ]

    return MedsslCLI


def _lightning_kwargs() -> dict:
    """What every medssl LightningCLI gets: any LightningModule and DataModule by class_path, values from
    ``MEDSSL_<COMMAND>__<KEY>`` environment variables, help in medssl's words (an example at its end) and
    Lightning's option help without its docstrings' markup."""
    import lightning.pytorch as pl
    from jsonargparse import DefaultHelpFormatter

    subcommands = {
        name: {"description": _lightning_description(name), "epilog": _examples([_command(name)], "example:")}
        for name in LIGHTNING_COMMANDS
    }
    return {
        "model_class": pl.LightningModule,  # any medssl method or slide model, chosen by class_path
        "datamodule_class": pl.LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {
            "prog": "medssl",
            "default_env": True,
            "env_prefix": "MEDSSL",
            "formatter_class": _help_formatter(DefaultHelpFormatter),
            **subcommands,
        },
    }


def _lightning_description(name: str) -> str:
    """The description ``medssl <name> --help`` starts with: the purpose, then how configs and flags work."""
    purpose = _command(name).purpose
    extra = {
        "fit": " --ckpt_path resumes a run exactly. With a medssl DataModule trainer.use_distributed_sampler "
        "is off whatever the config says: its sampler splits the data across ranks itself.",
        "predict": " The outputs are kept only by a prediction-writer callback (--trainer.callbacks); medssl "
        "heatmap and segment write their predictions to files.",
    }.get(name, "")
    return (
        f"{purpose[0].upper()}{purpose[1:]}, with LightningCLI. The YAML config (configs/pretrain, "
        "configs/finetune, configs/mil) names the model and DataModule by class_path; every key is also a "
        "flag (--trainer.devices 2, --data.init_args.cache DIR) or an environment variable "
        f"(MEDSSL_{name.upper()}__TRAINER__ACCELERATOR=cpu), and --print_config prints the result.{extra}"
    )


def run_lightning(argv: Sequence[str], run: bool = True):
    """LightningCLI with any medssl method and DataModule chosen by ``class_path`` in the YAML.

    Environment variables fill values (``MEDSSL_FIT__TRAINER__MAX_EPOCHS=...``-style, jsonargparse's
    ``default_env``); misspelt keys and wrong types fail with jsonargparse's message naming the key.
    With a medssl DataModule the Trainer gets ``use_distributed_sampler=False`` whatever the config
    says: its sampler shards the data across ranks itself and must not be wrapped by Lightning.
    ``run=False`` builds the model, DataModule and Trainer without a subcommand (``argv`` then has none).
    """
    command_line = sys.argv
    from_command_line = sys.argv[1:] == list(argv)
    if not from_command_line:  # called from Python: the caller's own flags are not Lightning's (DDP's
        sys.argv = sys.argv[:1]  # launcher re-runs sys.argv, so the command line itself is kept)
    try:
        # from the command line LightningCLI reads sys.argv itself: given args too, it warns that both are set
        return _medssl_cli()(args=None if from_command_line else list(argv), run=run, **_lightning_kwargs())
    finally:
        sys.argv = command_line


class _ParsersBuilt(Exception):
    """Raised by ``_lightning_parsers`` once LightningCLI has built its parsers, before it parses anything."""

    def __init__(self, parsers: dict[str, argparse.ArgumentParser]):
        super().__init__("LightningCLI parsers built")
        self.parsers = parsers


@functools.cache
def _lightning_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parsers of fit/validate/test/predict exactly as ``medssl fit`` builds them, without running
    anything: for ``command_help``, once per process (building them takes about a second)."""

    class ParsersOnly(_medssl_cli()):
        def parse_arguments(self, parser, args) -> None:
            raise _ParsersBuilt(dict(self._subcommand_parsers))

    try:
        ParsersOnly(args=[], **_lightning_kwargs())
    except _ParsersBuilt as built:
        return built.parsers
    raise AssertionError("LightningCLI returned without parsing its arguments")


@contextlib.contextmanager
def _terminal_width(columns: int) -> Iterator[None]:
    """argparse wraps help to the terminal (COLUMNS): fixed here, so that the docs' reference is the same
    wherever it is built."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``build_parser()``, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def command_help(name: str | None = None, columns: int = 100) -> str:
    """The plain-text ``--help`` of ``medssl`` (name None) or of one command of ``COMMANDS``, wrapped to
    ``columns``: the docs' CLI reference is generated from the parsers, so it cannot drift from them.
    The LightningCLI commands cost one Lightning import and parser build per process (seconds)."""
    if name is not None:
        _command(name)  # an unknown name fails naming the commands
    with _terminal_width(columns):
        if name is None:
            return build_parser().format_help()
        if name in LIGHTNING_COMMANDS:
            return _lightning_parsers()[name].format_help()
        return subparsers(build_parser())[name].format_help()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
