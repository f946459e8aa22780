"""The ``medssl`` command line.

``medssl tile``  slides → Zarr tile cache (see ``medssl tile --help``)
``medssl info``  summarise a cache

Exit status: 0 when everything succeeded, 1 when some inputs failed (the others finished and the
manifest says why), 2 on a usage or configuration error before any work started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medssl.errors import MedsslError


def _add_tile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tile",
        help="tile whole-slide images into a Zarr cache",
        description="Tile slides (files, folders, globs or a CSV manifest with slide_id,path[,label,stain,mpp]) "
        "into one resumable Zarr cache at a target physical resolution.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="slide files, folders, glob patterns or CSV manifests")
    p.add_argument("--out", required=True, help="cache folder (holds cache.zarr, manifest.csv, qc/)")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=float, help="target microns per pixel [default: 0.5]")
    res.add_argument("--magnification", type=float, help="target magnification, converted as 10/M µm/px")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in target pixels")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--overlap", type=int, default=0, help="overlap between neighbouring tiles, target px")
    step.add_argument("--stride", type=int, help="distance between tile origins, target px")
    p.add_argument("--min-tissue", type=float, default=0.5, help="keep tiles with at least this tissue fraction")
    p.add_argument("--resample", default="box", help="resize filter: box (area), nearest, bilinear, bicubic, lanczos")
    p.add_argument("--assume-mpp", type=float, help="MPP for slides whose metadata has none")
    t = p.add_argument_group("tissue detection (HSV saturation on a thumbnail)")
    t.add_argument("--mask-mpp", type=float, default=8.0, help="thumbnail resolution for the mask, µm/px")
    t.add_argument("--saturation-threshold", type=float, help="fixed threshold 0..255 instead of Otsu")
    t.add_argument("--min-saturation", type=float, default=15.0, help="floor under Otsu's threshold, 0..255")
    t.add_argument("--max-brightness", type=float, default=250.0, help="brighter pixels are background")
    t.add_argument("--blur", type=int, default=5, help="median filter width, mask px (0 = off)")
    t.add_argument("--close", type=int, default=4, help="closing radius, mask px (0 = off)")
    t.add_argument("--no-fill-holes", action="store_true", help="keep holes inside tissue as background")
    t.add_argument("--min-area", type=float, default=20000.0, help="drop tissue pieces smaller than this, µm²")
    s = p.add_argument_group("storage")
    s.add_argument("--codec", default="raw", choices=("raw", "zstd", "lz4", "jpeg"), help="tile pixel codec")
    s.add_argument("--jpeg-quality", type=int, default=90)
    s.add_argument("--chunk-tiles", type=int, default=32, help="tiles per chunk (per shard with jpeg)")
    r = p.add_argument_group("running")
    r.add_argument("--workers", type=int, default=1, help="slides processed in parallel (processes)")
    r.add_argument("--threads", type=int, default=2, help="read/decode threads per slide")
    r.add_argument("--shard", help="i/n: process only shard i of n (for cluster job arrays)")
    r.add_argument("--overwrite", action="store_true", help="rebuild a cache made with other parameters")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_tile)


def _run_tile(args: argparse.Namespace) -> int:
    from medssl.preprocess import StorageParams, TilingParams, TissueParams, tile_slides
    from medssl.preprocess.runner import parse_shard
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
            ),
        )
        storage = StorageParams(codec=args.codec, jpeg_quality=args.jpeg_quality, chunk_tiles=args.chunk_tiles)
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
    )
    counts = {s: sum(r.status == s for r in summary.results) for s in ("done", "skipped", "failed")}
    print(
        f"{counts['done']} tiled, {counts['skipped']} already complete, {counts['failed']} failed; "
        f"{summary.tiles} tiles at {target:g} µm/px\n"
        f"cache:    {summary.out / 'cache.zarr'}\nmanifest: {summary.manifest}\nqc:       {summary.out / 'qc'}"
    )
    for result in summary.failed:
        print(f"  failed {result.item_id}: {result.reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a medssl cache")
    p.add_argument("cache", help="cache folder or .zarr store")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from medssl.preprocess import SlideCache

    cache = SlideCache(args.cache)
    print(f"{cache.path}: schema v{cache.meta['schema_version']}, written by medssl {cache.meta['medssl_version']}")
    print("parameters:", json.dumps(cache.params, indent=2))
    total = 0
    for slide_id in cache.ids:
        meta = cache.metadata(slide_id)
        total += meta["num_tiles"]
        print(
            f"  {slide_id}: {meta['num_tiles']} tiles, level {meta['read_level']} "
            f"(scale {meta['scale']:.3g}), source {meta['mpp']:.4g} µm/px ({meta['mpp_source']})"
        )
    print(f"{len(cache)} slides, {total} tiles")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_tile_parser(sub)
    _add_info_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
