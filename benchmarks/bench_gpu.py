"""Every pretraining config for a fixed number of steps, fed the way a GPU wants it: device views, bf16 and
channels-last. One table (and JSON) of samples/s, the step split, loader stall and peak GPU memory.

Usage::

    bash benchmarks/gpu.sh                                  # a GPU machine: every config, realistic sizes
    python benchmarks/bench_gpu.py --toy                    # tiny sizes on CPU (the default without CUDA)
    python benchmarks/bench_gpu.py --configs simclr_tiles alice --steps 10

It builds its own synthetic caches under ``--work-dir`` (kept between runs, rebuilt when the sizes
change): tiles from synthetic slides (``medssl tile``), CT-like phantoms (``medssl cache-volumes``), and a
multistain cohort of patch features for MADELEINE (which trains on features, without views). Then every
config in ``configs/pretrain`` runs through ``medssl fit`` (:func:`medssl.cli.run_lightning`) for
``--warmup`` + ``--steps`` steps with the config's own model and batch size at realistic input sizes:

==============  =======================================================================================
tiles           224² views of 224² tiles (SwAV: 2 × 224² + 6 × 96²), the config's batch (256)
slices          224² views of CT slices, the config's batch (64)
stacks          joint 2D/3D: 64 × 128 × 128 slice stacks, two views, the config's batch (4)
pairs           Alice: two corresponding 96³ crops, the config's batch (4)
features        MADELEINE: 65 cases × 5 stains × 2,048 tokens × 512-d patch features
==============  =======================================================================================

with ``--data.init_args.views_on device`` (where a DataModule has views), ``--trainer.precision
bf16-mixed`` and :class:`~medssl.methods.callbacks.EncoderSpeedups` (channels-last encoders;
``--compile`` adds ``torch.compile``). :class:`~medssl.methods.callbacks.StepTimer` splits each step into
waiting for data (loader + host-to-device copy), making views, and compute (forward, backward,
optimiser), on the GPU's timeline (CUDA events); ``stall`` is the share of the step spent waiting for
data. Figures are means over the ``--steps`` steps after the warm-up. A config that fails (views not yet
device-capable, out of memory) gets its error in the table and the run goes on; configs not started
within ``--budget`` seconds are skipped, so the whole run fits the time it is given. Validation,
checkpoints and loggers are off: only training steps are timed.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import machine  # noqa: E402  (benchmarks/ is a folder of scripts)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"
STAINS = ["HE", "ER", "PR", "HER2", "KI67"]  # configs/pretrain/madeleine.yaml's


@dataclass(frozen=True)
class Scale:
    """Input sizes, batches (None: the config's) and synthetic data of one run."""

    name: str
    tile: int  #: tile side in the cache
    view: int  #: view side of tiles
    tile_batch: int | None
    slice: int  #: slice view side
    slice_batch: int | None
    stack: tuple[int, int, int]  #: joint 2D/3D window (slices, H, W)
    stack_batch: int | None
    crop: tuple[int, int, int]  #: Alice crop
    crop_batch: int | None
    tokens: int  #: MADELEINE tokens per slide
    case_batch: int | None
    feature_dim: int  #: patch feature width (MADELEINE's in_dim)
    slides: int  #: synthetic slides tiled for the tile cache
    slide_px: int  #: their side, level-0 pixels at 0.25 µm/px
    volumes: int  #: CT phantoms in the volume cache
    volume_shape: tuple[int, int, int]  #: their voxels (x, y, z) at 1.5 mm
    cases: int  #: multistain cases (every one with all of STAINS)
    toy_models: bool  #: shrink the networks (CPU)
    workers: int | None  #: DataLoader workers (None: the DataModule's default)
    build_workers: int | None  #: processes building the caches (None: one per core)


REALISTIC = Scale(
    name="realistic",
    tile=224,
    view=224,
    tile_batch=None,
    slice=224,
    slice_batch=None,
    stack=(64, 128, 128),
    stack_batch=None,
    crop=(96, 96, 96),
    crop_batch=None,
    tokens=2048,
    case_batch=None,
    feature_dim=512,
    slides=10,  # ~7,400 tiles: 28 batches of 256, one epoch for the default 25 steps
    slide_px=8192,
    volumes=32,
    volume_shape=(200, 240, 128),
    cases=65,
    toy_models=False,
    workers=None,
    build_workers=None,
)
TOY = Scale(
    name="toy",
    tile=32,
    view=32,
    tile_batch=8,
    slice=32,
    slice_batch=8,
    stack=(8, 32, 32),
    stack_batch=2,
    crop=(32, 32, 64),  # SwinUNETR's deepest stage keeps 1 × 1 × 2 (norms need more than one element)
    crop_batch=1,
    tokens=16,
    case_batch=2,
    feature_dim=8,
    slides=1,
    slide_px=2048,
    volumes=4,
    volume_shape=(96, 64, 40),  # x, y, z: the body (85 % × 65 % of x × y) holds a 64 × 32 × 32 crop
    cases=2,
    toy_models=True,
    workers=1,
    build_workers=1,  # worker processes cost more than they save on toy caches
)


@dataclass
class Caches:
    tiles: Path | None = None
    volumes: Path | None = None
    multistain: Path | None = None
    features: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# -- configs ------------------------------------------------------------------------------------------------
def config_kind(config: Path) -> str:
    """What a config trains on: ``tiles``, ``slices``, ``patches``, ``stacks``, ``pairs`` or ``features``."""
    data = yaml.safe_load(config.read_text())["data"]
    name = data["class_path"].rsplit(".", 1)[-1]
    if name == "TileDataModule":
        return "tiles"
    if name == "VolumeDataModule":
        return data.get("init_args", {}).get("mode", "slices")
    if name == "StainSetDataModule":
        return "features"
    raise ValueError(f"{config.name}: no synthetic data for {name}")


def model_class(config: Path) -> str:
    return yaml.safe_load(config.read_text())["model"]["class_path"].rsplit(".", 1)[-1]


def takes(class_path: str, argument: str) -> bool:
    """Whether the class at ``class_path`` (or a class it passes ``**kwargs`` to) takes ``argument``."""
    import importlib

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        if argument in parameters:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def toy_model(config: Path) -> list[str]:
    """Networks small enough for a CPU, per method (the config's losses and structure kept)."""
    name, text = model_class(config), config.read_text()
    channels = 1 if "VolumeDataModule" in text else 3
    resnet = f'{{"name": "resnet18", "spatial_dims": 2, "in_channels": {channels}, "width": 0.25}}'
    small = {
        "SimCLR": {"backbone": resnet, "proj_hidden_dim": "32", "proj_dim": "16"},
        "BarlowTwins": {"backbone": resnet, "proj_hidden_dim": "32", "proj_dim": "32"},
        "SwAV": {"backbone": resnet, "proj_hidden_dim": "32", "proj_dim": "16", "n_prototypes": "16"},
        "LVMMed": {"backbone": resnet, "graph_size": "4", "knn": "2"},
        "JointIntraInter": {
            "backbone": resnet,
            **{"d_model": "16", "proj_hidden_dim": "16", "intra_proj_dim": "8", "intra_prototypes": "8"},
            **{"inter_prototypes": "4", "inter_clusters": "[2]"},
            "transformer": '{"layers": 1, "ffn_dim": 24, "heads": 2}',
        },
        "Alice": {
            "backbone": '{"in_channels": 1, "feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4}',
            **{"out_dim": "16", "patch_out_dim": "16", "head_hidden_dim": "32", "bottleneck_dim": "8"},
            **{"casa_heads": "2", "mask_block": "8"},
        },
        "Madeleine": {"hidden_dim": "6", "heads": "2", "embed_dim": "5", "token_dim": "4"},
    }.get(name)
    if small is None:
        raise ValueError(f"{config.name}: no toy size for {name}")
    return [arg for key, value in small.items() for arg in (f"--model.init_args.{key}", value)]


def data_arguments(config: Path, scale: Scale, caches: Caches) -> list[str]:
    """The synthetic cache and the input size of ``scale`` for ``config``'s kind of data."""
    kind = config_kind(config)

    def batch(size: int | None) -> list[str]:
        return [] if size is None else ["--data.init_args.batch_size", str(size)]

    if kind == "tiles":
        assert caches.tiles is not None
        out = ["--data.init_args.cache", str(caches.tiles), "--data.init_args.view_size", str(scale.view)]
        return out + batch(scale.tile_batch)
    if kind == "features":
        assert caches.multistain is not None and caches.features is not None
        return [
            *("--data.init_args.cache", str(caches.multistain), "--data.init_args.features", str(caches.features)),
            *("--data.init_args.tokens", str(scale.tokens), "--model.init_args.in_dim", str(scale.feature_dim)),
            *batch(scale.case_batch),
        ]
    assert caches.volumes is not None
    size, size_batch = {
        "slices": ([scale.slice] * 2, scale.slice_batch),
        "stacks": (list(scale.stack), scale.stack_batch),
        "pairs": (list(scale.crop), scale.crop_batch),
    }[kind]
    return ["--data.init_args.cache", str(caches.volumes), "--data.init_args.spatial_size", str(size)] + batch(
        size_batch
    )


def fit_arguments(config: Path, scale: Scale, caches: Caches, args: argparse.Namespace, root: Path) -> list[str]:
    """``medssl fit`` of ``config`` for the benchmark: its data and sizes, the speed switches, the timer,
    ``warmup + steps`` training steps and nothing else (no validation, checkpoints or loggers)."""
    spec = yaml.safe_load(config.read_text())
    data_class, model_path = spec["data"]["class_path"], spec["model"]["class_path"]
    callbacks = [
        {
            "class_path": "medssl.methods.callbacks.EncoderSpeedups",
            "init_args": {"channels_last": args.channels_last, "compile": args.compile},
        },
        {"class_path": "medssl.methods.callbacks.StepTimer", "init_args": {"skip": args.warmup, "report": False}},
    ]
    out = ["fit", "--config", str(config), *data_arguments(config, scale, caches)]
    if scale.workers is not None:
        out += ["--data.init_args.num_workers", str(scale.workers)]
    if takes(data_class, "views_on"):
        out += ["--data.init_args.views_on", args.views_on]
    if takes(model_path, "init_checkpoint"):
        out += ["--model.init_args.init_checkpoint", "null"]  # staged configs start from the stage before
    if scale.toy_models:
        out += toy_model(config)
    if model_class(config) in ("JointIntraInter", "Alice"):
        out += ["--model.init_args.warmup_epochs", "0"]  # epochs of a step or two: no step of lr 0
    gpu = torch.cuda.is_available() and not args.cpu
    return out + [
        *("--trainer.accelerator", "gpu" if gpu else "cpu", "--trainer.devices", "1"),
        *("--trainer.precision", args.precision, "--trainer.max_steps", str(args.warmup + args.steps)),
        *("--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"),
        *("--trainer.logger", "false", "--trainer.enable_checkpointing", "false"),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        *("--trainer.default_root_dir", str(root), "--trainer.callbacks", json.dumps(callbacks)),
    ]


# -- synthetic caches -----------------------------------------------------------------------------------------
def _write_slide(path: Path, side: int, seed: int) -> Path:
    from medssl.synthetic.slides import random_layout, write_slide

    return write_slide(path, random_layout(side, side, n_pieces=2, coverage=0.8, seed=seed), mpp=0.25)


def _write_phantom(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    from medssl.synthetic.volumes import ct_phantom, grid_affine, write_nifti

    return write_nifti(path, ct_phantom(shape, seed=seed), grid_affine((1.5, 1.5, 1.5)))


def in_parallel(function, workers: int, *arguments) -> list:
    """``map(function, *arguments)`` in ``workers`` processes (inline for one)."""
    if workers <= 1:
        return list(map(function, *arguments))
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(function, *arguments))


def built(folder: Path, recipe: dict) -> bool:
    """Whether ``folder`` holds a cache built from ``recipe`` (a finished build leaves it in ``recipe.json``)."""
    marker = folder / "recipe.json"
    return marker.exists() and json.loads(marker.read_text()) == recipe


def finish(folder: Path, recipe: dict) -> None:
    (folder / "recipe.json").write_text(json.dumps(recipe))


def tile_cache(work: Path, scale: Scale, workers: int) -> Path:
    """``scale.slides`` synthetic slides (written in parallel) tiled at 0.25 µm/px into ``scale.tile``² tiles."""
    from medssl.preprocess import TilingParams, tile_slides

    folder, recipe = work / "tiles", {"slides": scale.slides, "side": scale.slide_px, "tile": scale.tile}
    if not built(folder, recipe):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        (folder / "slides").mkdir(parents=True)
        paths = [folder / "slides" / f"slide-{k}.tiff" for k in range(scale.slides)]
        in_parallel(
            _write_slide, min(workers, scale.slides), paths, [scale.slide_px] * scale.slides, range(scale.slides)
        )
        params = TilingParams(target_mpp=0.25, tile_size=scale.tile)
        summary = tile_slides(paths, folder / "cache", params, workers=min(workers, scale.slides), progress=False)
        if summary.failed:
            raise RuntimeError(f"tiling the synthetic slides failed: {summary}")
        finish(folder, recipe)
    return folder / "cache"


def volume_cache(work: Path, scale: Scale, workers: int) -> Path:
    """``scale.volumes`` CT-like phantoms of ``scale.volume_shape`` voxels, all for training."""
    from medssl.preprocess import VolumeParams, cache_volumes

    folder, recipe = work / "volumes", {"volumes": scale.volumes, "shape": list(scale.volume_shape)}
    if not built(folder, recipe):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        (folder / "nifti").mkdir(parents=True)
        paths = [folder / "nifti" / f"ct-{k:03d}.nii" for k in range(scale.volumes)]
        shapes = [scale.volume_shape] * scale.volumes
        in_parallel(_write_phantom, min(workers, scale.volumes), paths, shapes, range(scale.volumes))
        rows = "".join(f"{p.name.split('.')[0]},{p},CT,train\n" for p in paths)
        (folder / "cohort.csv").write_text("volume_id,image,modality,split\n" + rows)
        summary = cache_volumes(
            [folder / "cohort.csv"],
            folder / "cache",
            VolumeParams(spacing=(1.5, 1.5, 1.5)),
            workers=min(workers, scale.volumes),
            progress=False,
        )
        if summary.failed:
            raise RuntimeError(f"caching the phantoms failed: {summary}")
        finish(folder, recipe)
    return folder / "cache"


def multistain_cache(work: Path, scale: Scale, workers: int) -> tuple[Path, Path]:
    """``scale.cases`` cases with every stain of :data:`STAINS`: one small synthetic slide tiled once per
    (case, stain) row, and random ``scale.feature_dim``-d patch features per tile, laid out as
    ``medssl embed`` writes them. MADELEINE reads only the features and the cases' stains."""
    from medssl.cache import SlideCache
    from medssl.cache import store as cache_store
    from medssl.preprocess import TilingParams, tile_slides

    folder = work / "multistain"
    recipe = {"cases": scale.cases, "dim": scale.feature_dim, "stains": STAINS}
    if not built(folder, recipe):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        slide = _write_slide(folder / "section.tiff", 2048, seed=7)
        rows = "".join(
            f"case{c:03d}-{stain},{slide},{'positive' if c % 2 else 'negative'},train,{stain},case{c:03d}\n"
            for c in range(scale.cases)
            for stain in STAINS
        )
        (folder / "cohort.csv").write_text("slide_id,path,label,split,stain,case_id\n" + rows)
        params = TilingParams(target_mpp=2.0, tile_size=32)  # 256² px of tissue → a few dozen rows per slide
        summary = tile_slides([folder / "cohort.csv"], folder / "cache", params, workers=workers, progress=False)
        if summary.failed:
            raise RuntimeError(f"tiling the multistain cohort failed: {summary}")
        cache, rng = SlideCache(folder / "cache"), np.random.default_rng(0)
        features = cache_store.open_for_writing(
            folder / "features", "embeddings", {"encoder": "random", "items": "slides"}
        )
        for slide_id in cache.ids:
            rows_of_slide = cache.num_tiles(slide_id)
            with cache_store.staged_item(features, "embeddings", slide_id) as group:
                group.create_array("features", data=rng.standard_normal((rows_of_slide, scale.feature_dim), np.float32))
                cache_store.commit_item(features, "embeddings", slide_id, {"num_rows": rows_of_slide})
        finish(folder, recipe)
    return folder / "cache", folder / "features"


def build_caches(kinds: set[str], work: Path, scale: Scale, workers: int) -> Caches:
    caches = Caches()
    if "tiles" in kinds:
        start = time.perf_counter()
        caches.tiles = tile_cache(work, scale, workers)
        caches.seconds["tiles"] = time.perf_counter() - start
    if kinds & {"slices", "patches", "stacks", "pairs"}:
        start = time.perf_counter()
        caches.volumes = volume_cache(work, scale, workers)
        caches.seconds["volumes"] = time.perf_counter() - start
    if "features" in kinds:
        start = time.perf_counter()
        caches.multistain, caches.features = multistain_cache(work, scale, workers)
        caches.seconds["multistain"] = time.perf_counter() - start
    return caches


# -- running ----------------------------------------------------------------------------------------------------
def describe_input(config: Path, scale: Scale, batch: int) -> str:
    kind = config_kind(config)
    if kind == "tiles":
        return f"{batch} × {scale.view}² of {scale.tile}²"
    if kind == "slices":
        return f"{batch} × {scale.slice}²"
    if kind == "stacks":
        return f"{batch} × {'×'.join(map(str, scale.stack))}"
    if kind == "pairs":
        return f"{batch} × 2 × {scale.crop[0]}³" if len(set(scale.crop)) == 1 else f"{batch} × 2 × {scale.crop}"
    return f"{batch} × {len(STAINS)} × {scale.tokens} × {scale.feature_dim}"


def error_line(error: BaseException) -> str:
    """The error's last line (a jsonargparse SystemExit's message is on stderr: its code is all we get)."""
    if isinstance(error, SystemExit):
        return f"configuration refused (exit code {error.code}); see the messages above"
    lines = str(error).strip().splitlines()
    last = lines[-1] if lines else ""
    named = last.split(":", 1)[0].endswith(("Error", "Exception"))  # a worker's error re-raised names itself
    return (last if named else f"{type(error).__name__}: {last}")[:300]


def run_config(config: Path, scale: Scale, caches: Caches, args: argparse.Namespace) -> dict:
    """One config's fit, as ``medssl fit`` runs it (the CLI builds model, DataModule and Trainer; then
    ``trainer.fit``); its row: figures, or the error. Errors go in the row and the run goes on; an
    interrupt (Ctrl-C, ``timeout``'s SIGTERM, which Lightning turns into ``SystemExit``) ends it."""
    from medssl.cli import run_lightning
    from medssl.methods.callbacks import StepTimer

    row: dict = {"config": config.stem, "method": model_class(config), "data": config_kind(config)}
    start = time.perf_counter()
    try:
        try:
            arguments = fit_arguments(config, scale, caches, args, args.work_dir / "runs" / config.stem)
            cli = run_lightning(arguments[1:], run=False)
        except SystemExit as refused:  # jsonargparse's way to say a key or value is wrong
            raise RuntimeError(error_line(refused)) from refused
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        timer = next(c for c in cli.trainer.callbacks if isinstance(c, StepTimer))  # pyright: ignore[reportAttributeAccessIssue]
        summary = timer.summary()
        if not summary["steps"]:
            raise RuntimeError("no training step ran")
        row.update(summary, input=describe_input(config, scale, summary["batch"]))
    except Exception as error:  # noqa: BLE001 - a config's failure is its row; the others run
        traceback.print_exc()
        row["error"] = error_line(error)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["wall_s"] = time.perf_counter() - start
    return row


def table(rows: list[dict]) -> str:
    header = (
        f"{'config':<28} {'input':<24} {'samples/s':>10} {'step ms':>8} {'data':>7} {'views':>7} {'compute':>8} "
        f"{'stall':>6} {'peak MiB':>9} {'wall s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']:<28} {'':<24} {r['error']}")
            continue
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        lines.append(
            f"{r['config']:<28} {r['input']:<24} {r['samples_per_s']:>10.1f} {r['step_ms']:>8.1f} "
            f"{r['data_ms']:>7.1f} {r['views_ms']:>7.1f} {r['compute_ms']:>8.1f} {100 * r['stall']:>5.1f}% "
            f"{peak:>9} {r['wall_s']:>7.1f}"
        )
    return "\n".join(lines)


def select(names: list[str] | None) -> list[Path]:
    every = sorted(CONFIGS.glob("*.yaml"))
    if not names:
        return every
    by_name = {c.stem: c for c in every}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; there are {sorted(by_name)}")
    return [by_name[n] for n in names]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", help="config names (stems) of configs/pretrain; default: all")
    parser.add_argument("--toy", action="store_true", help="tiny sizes and networks (the default without CUDA)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with CUDA")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per config")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing (compilation, allocator, cuDNN)")
    parser.add_argument("--views-on", choices=("device", "cpu"), default="device")
    parser.add_argument(
        "--precision",
        help="Lightning precision (default: bf16-mixed on CUDA; 32-true on a CPU, where bf16 without native "
        "instructions is emulated: Alice's toy step takes 12× longer)",
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders (inductor)")
    parser.add_argument("--budget", type=float, default=420.0, help="start no config after this many seconds")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "medssl-bench-gpu")
    parser.add_argument("--json", type=Path, help="where the JSON goes (default: <work-dir>/bench_gpu.json)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    configs = select(args.configs)
    on_gpu = torch.cuda.is_available() and not args.cpu
    scale = TOY if args.toy or not on_gpu else REALISTIC
    args.precision = args.precision or ("bf16-mixed" if on_gpu else "32-true")
    if scale is TOY and not args.toy:
        print("no CUDA device: toy sizes on the CPU (--toy)", file=sys.stderr)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = args.json or args.work_dir / "bench_gpu.json"
    workers = scale.build_workers or max(1, len(os.sched_getaffinity(0)))

    caches = build_caches({config_kind(c) for c in configs}, args.work_dir / scale.name, scale, workers)
    report = {
        "machine": machine("cuda" if on_gpu else "cpu"),
        "scale": asdict(scale),
        "switches": {
            "views_on": args.views_on,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "cache_build_s": caches.seconds,
        "rows": [],
    }
    for config in configs:
        if time.perf_counter() - start > args.budget:
            report["rows"].append({"config": config.stem, "error": f"skipped: past the {args.budget:.0f} s budget"})
            continue
        print(f"== {config.stem}", file=sys.stderr, flush=True)
        report["rows"].append(run_config(config, scale, caches, args))
        out.write_text(json.dumps(report, indent=1))  # what ran so far survives a timeout
    report["total_s"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=1))
    switches = ", ".join(f"{k} {v}" for k, v in report["switches"].items())
    print(f"\n{scale.name} sizes, {switches}; means over {args.steps} steps after {args.warmup} warm-up")
    print(
        "step ms = data (loader + copy to the device) + views (on the device) + compute (forward, backward, "
        "optimiser); stall = data / step\n"
    )
    print(table(report["rows"]))
    built = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in caches.seconds.items())
    print(f"\ncaches: {built}; total {report['total_s']:.0f} s; JSON: {out}")
    return report


if __name__ == "__main__":
    main()
