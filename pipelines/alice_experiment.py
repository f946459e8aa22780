"""Does Alice (Jiang et al., ICCV 2023) learn dense anatomy? Landmark matching across patients with known
correspondences.

Data (made once under ``--out``, ``medssl.synthetic.volumes.volume_cohort``, cached at 3 mm): ``--cases``
"patients" of each of three sources, each a template under its own random similarity and smooth
deformation and scanner look: brain MRI (nilearn's real 1 mm MNI152 T1), nibabel's real anatomical MRI
(a small field of view) and a CT phantom; half of each source's cases train, half are held out. The
template position of every voxel of every patient is known (``cohort_source_mm``), so two patients'
voxels show the same anatomy where their template positions agree.

Per seed: Alice (``configs/pretrain/alice.yaml``, ``same_volume`` pairs by default) is pretrained by
``medssl fit`` on the training volumes at toy scale (a SwinUNETR of feature size 12, one block per
stage, window 4, 32 × 32 × 64 crops, batch 2), then compared with the SAME architecture untrained (the model the CLI
builds with the same seed: the pretraining's starting point; ``random``) on the held-out patients:

- landmark matching (``medssl.eval.landmarks``): for pairs (A, B) of held-out patients of one source,
  ``--landmarks`` random body voxels of A that B shows; each landmark's dense feature (the teacher's
  L2-normalised ``fine``, stride 4, and ``coarse``, stride 16, decoder maps of the whole volume), its
  most similar voxel of B (cosine similarity averaged over the two levels, each upsampled to voxels),
  and the error: the distance (mm) between the template positions of the landmark and of the match.
  Reported: mean and median error per source.

Baselines that need no network: ``intensity`` (each voxel's 5³ patch, and the 5³ patch of the image
average-pooled by 4, as the fine and coarse levels: normalised cross-correlation; how hard the task is
for raw voxels), ``same_position`` (the voxel of B at the landmark's scanner position, no matching at
all: how far apart the patients are), and ``best_possible`` (the best voxel of B: its grid's floor).

Writes ``<out>/results.csv`` (one row per seed, init and metric), ``summary.csv`` (mean ± std over seeds),
prints a Markdown table and a reading of it. Finished pieces are skipped on a re-run (the pretraining per
seed and correspondence, the baselines once). ``--diagnose`` adds, per seed, the errors with the fine or the
coarse level alone and RankMe of each level's features (are they collapsed?).

``--lr`` and ``--momentum`` (the teacher EMA's start) other than the defaults name a variant: its seed folders
and its ``results``/``summary`` CSVs carry the values (``same_volume-lr0.0001-m0.99-seed-0``), so it reuses
the data and the baselines but not the default runs' pretraining.

    OMP_NUM_THREADS=1 python pipelines/alice_experiment.py --out runs/alice-experiment --seeds 0 1 2
    # then, reusing everything: per-level errors and RankMe of the features
    OMP_NUM_THREADS=1 python pipelines/alice_experiment.py --out runs/alice-experiment --seeds 0 1 2 --diagnose
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))
import label_efficiency as le  # noqa: E402  (pipelines/ is a folder of scripts, not a package)

from medssl.eval.results import write_csv_atomic  # noqa: E402

PRETRAIN = ROOT / "configs" / "pretrain" / "alice.yaml"
SPACING = 3.0
SPLITS = {"train": 0.5, "test": 0.5}
SOURCES = ("brain", "mri", "ct")
NETWORK_LEVELS = {"fine": 4, "coarse": 16}  # SwinEncoder.dense_maps, by stride
INTENSITY_LEVELS = {"fine": 1, "coarse": 4}
INITS = ("pretrained", "student", "random", "intensity", "same_position", "best_possible")
BACKBONE = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 6, 12, 24], "window_size": 4}
DEFAULT_LR, DEFAULT_MOMENTUM = 5e-4, 0.996


# -- data --------------------------------------------------------------------------------------------
def cohort_data(root: Path, n_cases: int) -> dict:
    """The mixed cohort cached at 3 mm."""
    from medssl.preprocess import VolumeParams, cache_volumes
    from medssl.synthetic.volumes import volume_cohort

    data = {"cache": root / "cache"}
    done = root / "data.done"
    if done.exists():
        return data
    manifest = volume_cohort(root / "volumes", n=n_cases, spacing=SPACING, fractions=SPLITS, seed=0)
    summary = cache_volumes(
        [manifest], data["cache"], VolumeParams(spacing=(SPACING, SPACING, SPACING)), progress=False
    )
    if summary.failed:
        raise RuntimeError(f"caching failed: {[r.reason for r in summary.failed]}")
    done.write_text("ok")
    return data


def template_positions(volume_id: str, metadata: dict):
    """``[Z, Y, X, 3]`` float64 tensor: the template position (mm) of each voxel of a cached patient. The
    cache's voxel (z, y, x) is at ``affine @ (x, y, z, 1)`` (RAS mm, after its body crop); the patient's
    field (on its NIfTI grid) is interpolated there."""
    import numpy as np
    import torch
    from scipy.ndimage import map_coordinates

    from medssl.synthetic.volumes import cohort_source_mm

    field, nifti_affine = cohort_source_mm(volume_id, spacing=SPACING, seed=0)
    z, y, x = metadata["shape"]
    zyx = np.stack(np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij"), axis=-1)
    cache_affine = np.asarray(metadata["affine"], dtype=np.float64)
    world = zyx[..., ::-1] @ cache_affine[:3, :3].T + cache_affine[:3, 3]
    to_voxel = np.linalg.inv(nifti_affine)
    ijk = (world @ to_voxel[:3, :3].T + to_voxel[:3, 3]).transpose(3, 0, 1, 2)
    positions = np.stack([map_coordinates(field[..., c], ijk, order=1, mode="nearest") for c in range(3)], -1)
    return torch.from_numpy(positions)


def held_out(cache_path: Path) -> dict[str, dict]:
    """Per held-out patient: its image ``[Z, Y, X]`` (float32 tensor), template positions, the scanner
    (world) position of each voxel and its body mask (above the correspondence samplers' body threshold)."""
    import numpy as np
    import torch

    from medssl.cache import VolumeCache
    from medssl.data.correspondence import body_threshold

    cache = VolumeCache(cache_path)
    out = {}
    for v in cache.ids:
        metadata = cache.metadata(v)
        if metadata.get("split") != "test":
            continue
        image = np.asarray(cache.image(v), dtype=np.float32)
        affine = np.asarray(metadata["affine"], dtype=np.float64)
        zyx = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), axis=-1)
        out[v] = {
            "image": torch.from_numpy(image),
            "positions": template_positions(v, metadata),
            "world": torch.from_numpy(zyx[..., ::-1] @ affine[:3, :3].T + affine[:3, 3]),
            "body": torch.from_numpy(image > body_threshold(image)),
        }
    return out


def pairs(volumes: dict[str, dict]) -> list[tuple[str, str]]:
    """Every unordered pair of held-out patients of one source, A the lower id."""
    ids = sorted(volumes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if a.split("-")[0] == b.split("-")[0]]


def nearest_voxels(positions_b, targets):
    """``(distance [L], voxel [L, 3])``: the voxel of B whose template position is nearest each target
    position ``[L, 3]`` (a k-d tree; what ``best_possible_mm`` measures, faster for many voxels)."""
    import numpy as np
    import torch
    from scipy.spatial import KDTree

    distance, flat = KDTree(positions_b.reshape(-1, 3).numpy()).query(targets.numpy())
    voxels = np.stack(np.unravel_index(flat, tuple(positions_b.shape[:3])), axis=-1)
    return torch.from_numpy(distance), torch.from_numpy(voxels)


def pick_landmarks(a: dict, b: dict, n: int, seed: int):
    """``n`` random body voxels of A that B shows (its best voxel within one voxel spacing), seeded."""
    import torch

    body = a["body"].nonzero()
    generator = torch.Generator().manual_seed(seed)
    candidates = body[torch.randperm(len(body), generator=generator)[: 4 * n]]
    distance, _ = nearest_voxels(b["positions"], a["positions"][candidates[:, 0], candidates[:, 1], candidates[:, 2]])
    return candidates[distance <= SPACING][:n]


# -- pretraining --------------------------------------------------------------------------------------
def pretrain_arguments(data: dict, out: Path, seed: int, args) -> list[str]:
    """``medssl fit`` of Alice at toy scale: SwinUNETR (feature size 12, depths 1,1,1,1, window 4), heads
    of 256 outputs (MLP 512, bottleneck 128), crops of 32 × 32 × 64 voxels (D, H, W; 96 × 96 × 192 mm),
    batch 2, the teacher temperature and the learning rate warmed up over the first ``--warmup-epochs``,
    no validation. (On one CPU thread a 64³ step at batch 4 takes about 30 s, this one about 2.5 s.)"""
    return [
        "fit",
        *("--config", str(PRETRAIN), "--seed_everything", str(seed)),
        *("--data.init_args.cache", str(data["cache"]), "--data.init_args.num_workers", "0"),
        *("--data.init_args.batch_size", "2", "--data.init_args.spatial_size", "[32, 32, 64]"),
        *("--data.init_args.correspondence", args.correspondence),
        *("--data.init_args.val_split", "null", "--data.init_args.test_split", "null"),
        *("--model.init_args.backbone", json.dumps({"in_channels": 1, **BACKBONE})),
        *("--model.init_args.out_dim", "256", "--model.init_args.patch_out_dim", "256"),
        *("--model.init_args.head_hidden_dim", "512", "--model.init_args.bottleneck_dim", "128"),
        *("--model.init_args.lr", str(args.lr), "--model.init_args.warmup_epochs", str(args.warmup_epochs)),
        *("--model.init_args.momentum", str(args.momentum)),
        *("--model.init_args.warmup_teacher_epochs", str(args.warmup_epochs)),
        *("--trainer.max_epochs", str(args.epochs), "--trainer.log_every_n_steps", "1"),
        *("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(out)),
        *le.QUIET,
    ]


def pretrain(data: dict, out: Path, seed: int, args) -> Path:
    """The last checkpoint of one pretraining run (skipped when done)."""
    done = out / "pretrain.done"
    if done.exists():
        return Path(done.read_text().strip())
    started = time.perf_counter()
    cli = le.lightning(pretrain_arguments(data, out, seed, args))
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = cli.trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        raise RuntimeError("the pretraining run kept no checkpoint (checkpointing is off in its config)")
    checkpoint = Path(callback.last_model_path or callback.best_model_path)
    (out / "pretrain_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}")
    done.write_text(str(checkpoint))
    return checkpoint


def untrained_model(data: dict, out: Path, seed: int, args):
    """The model the same command builds before training: same architecture, same seeded initialisation."""
    from medssl.cli import run_lightning

    return run_lightning(pretrain_arguments(data, out, seed, args)[1:], run=False).model


def loss_curve(out: Path) -> dict[str, float]:
    """Mean ``train/loss`` (and its three terms) over the first and the last tenth of the steps, and the
    number of steps, from the run's CSV log (one row per step)."""
    logs = sorted(out.rglob("csv_logs/*/metrics.csv"))
    if not logs:
        raise FileNotFoundError(f"{out}: no csv_logs/*/metrics.csv (the run logs train/loss there)")
    series: dict[str, list[float]] = {}
    with logs[-1].open() as f:
        for row in csv.DictReader(f):
            for name in ("loss", "cls", "patch", "rec"):
                if row.get(f"train/{name}"):
                    series.setdefault(name, []).append(float(row[f"train/{name}"]))
    steps = len(series["loss"])
    tenth = max(1, steps // 10)
    curve = {"optimiser_steps": float(steps)}
    for name, values in series.items():
        curve[f"{name}_first"] = statistics.fmean(values[:tenth])
        curve[f"{name}_last"] = statistics.fmean(values[-tenth:])
    return curve


def weight_change(trained, start) -> float:
    """‖θ_end − θ_0‖ / ‖θ_0‖ over the SwinUNETR's weights (is the encoder moving at all?)."""
    import torch

    now, before = trained.network.state_dict(), start.network.state_dict()
    keys = [k for k, v in before.items() if v.is_floating_point() and "running" not in k]
    delta = torch.cat([(now[k] - before[k]).flatten() for k in keys])
    return float(delta.norm() / torch.cat([before[k].flatten() for k in keys]).norm())


# -- dense features and landmark errors ------------------------------------------------------------------
def network_maps(encoder, image) -> dict:
    """The encoder's ``fine`` and ``coarse`` maps ``[C, d, h, w]`` of a whole volume ``[Z, Y, X]``. Axes
    shorter than 64 are zero-padded to 64 first (as the training crops are padded): SwinUNETR's
    bottleneck, at stride 32, must hold more than one voxel for its instance norms."""
    import torch
    import torch.nn.functional as F

    padding = [p for side in reversed(image.shape) for p in (0, max(0, 64 - side))]
    with torch.inference_mode():
        maps = encoder.eval().dense_maps(F.pad(image, padding)[None, None])
    return {
        level: maps[level][(0, slice(None), *(slice(0, math.ceil(side / stride)) for side in image.shape))].float()
        for level, stride in NETWORK_LEVELS.items()
    }


def intensity_maps(image) -> dict:
    """5³ patches of the image (stride 1) and of its 4× average-pooled copy (stride 4)."""
    import torch.nn.functional as F

    from medssl.eval.landmarks import intensity_patches

    pooled = F.avg_pool3d(image[None, None], 4, ceil_mode=True)[0, 0]
    return {"fine": intensity_patches(image), "coarse": intensity_patches(pooled)}


def same_position(landmarks, a: dict, b: dict):
    """The voxel of B nearest to each landmark's scanner (world) position: no matching at all."""
    import torch

    targets = a["world"][landmarks[:, 0], landmarks[:, 1], landmarks[:, 2]]
    flat = torch.cdist(targets, b["world"].reshape(-1, 3)).argmin(dim=1)
    return torch.stack(torch.unravel_index(flat, tuple(b["world"].shape[:3])), dim=-1)


def errors_by_source(volumes: dict, landmarks: dict, predict) -> dict[str, float]:
    """Mean and median error (mm) per source (and over all sources) of ``predict(pair, landmarks) →
    matches``, every landmark of every pair of a source pooled."""
    import torch

    from medssl.eval.landmarks import landmark_errors_mm

    pooled: dict[str, list] = {}
    for (a, b), points in landmarks.items():
        matches = predict(a, b, points)
        errors = landmark_errors_mm(points, matches, volumes[a]["positions"], volumes[b]["positions"])
        pooled.setdefault(a.split("-")[0], []).append(errors)
    scores = {}
    pooled["all"] = [e for source_errors in pooled.values() for e in source_errors]
    for source, parts in pooled.items():
        errors = torch.cat(parts)
        scores[f"{source}/mean_mm"] = float(errors.mean())
        scores[f"{source}/median_mm"] = float(errors.median())
    return scores


def matcher(volumes: dict, maps: dict, levels: dict):
    """``predict`` for :func:`errors_by_source` from per-volume feature maps."""
    from medssl.eval.landmarks import match_landmarks

    def predict(a: str, b: str, points):
        return match_landmarks(maps[a], maps[b], levels, points, tuple(volumes[b]["image"].shape))

    return predict


def landmark_scores(volumes: dict, landmarks: dict, encoder) -> dict[str, float]:
    maps = {v: network_maps(encoder, volumes[v]["image"]) for v in volumes}
    return errors_by_source(volumes, landmarks, matcher(volumes, maps, NETWORK_LEVELS))


def baselines(volumes: dict, landmarks: dict, out: Path) -> dict[str, dict[str, float]]:
    """Intensity patches, same scanner position and the grid's floor (seed-independent; cached)."""
    result = out / "baselines.json"
    if result.exists():
        return json.loads(result.read_text())

    def floor(a: str, b: str, points):
        return nearest_voxels(
            volumes[b]["positions"], volumes[a]["positions"][points[:, 0], points[:, 1], points[:, 2]]
        )[1]

    maps = {v: intensity_maps(volumes[v]["image"]) for v in volumes}
    scores = {
        "intensity": errors_by_source(volumes, landmarks, matcher(volumes, maps, INTENSITY_LEVELS)),
        "same_position": errors_by_source(volumes, landmarks, lambda a, b, p: same_position(p, volumes[a], volumes[b])),
        "best_possible": errors_by_source(volumes, landmarks, floor),
    }
    out.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(scores))
    return scores


# -- one seed ------------------------------------------------------------------------------------------
def evaluate(data: dict, checkpoint: Path, out: Path, seed: int, volumes: dict, landmarks: dict, args) -> list[dict]:
    """Loss curve, weight changes and landmark errors of the pretrained teacher (the exported encoder),
    of the student (what the gradient trains; the EMA teacher trails it, by much in a short run) and of
    their untrained twin (cached in ``out/landmarks.json``)."""
    result = out / "landmarks.json"
    if result.exists():
        return json.loads(result.read_text())
    from medssl.export import load_encoder

    start = untrained_model(data, out / "untrained", seed, args)
    trained, student = load_encoder(checkpoint, "encoder"), load_encoder(checkpoint, "student")
    curve = {f"pretrain/{name}": value for name, value in loss_curve(out).items()}
    curve["pretrain/weight_change"] = weight_change(trained, start.teacher)
    curve["pretrain/student_weight_change"] = weight_change(student, start.student)
    seconds = out / "pretrain_seconds.txt"
    curve["pretrain/minutes"] = float(seconds.read_text()) / 60 if seconds.exists() else math.nan
    rows = scored(curve, "pretrained", seed)
    for init, encoder in (("pretrained", trained), ("student", student), ("random", start.teacher)):
        rows += scored(landmark_scores(volumes, landmarks, encoder), init, seed, "landmarks")
    result.write_text(json.dumps(rows))
    return rows


def diagnose(checkpoint: Path, out: Path, seed: int, data: dict, volumes: dict, landmarks: dict, args) -> list[dict]:
    """Why (not): landmark errors with the fine or the coarse level alone, and RankMe of each level's
    features over held-out body voxels (are they collapsed?), for the teacher, the student and random
    init (cached in ``out/diagnosis.json``)."""
    result = out / "diagnosis.json"
    if result.exists():
        return json.loads(result.read_text())
    import torch

    from medssl.eval import rankme
    from medssl.export import load_encoder

    start = untrained_model(data, out / "untrained", seed, args)
    encoders = {
        "pretrained": load_encoder(checkpoint, "encoder"),
        "student": load_encoder(checkpoint, "student"),
        "random": start.teacher,
    }
    rows = []
    for init, encoder in encoders.items():
        maps = {v: network_maps(encoder, volumes[v]["image"]) for v in volumes}
        scores = {}
        for level, stride in NETWORK_LEVELS.items():
            errors = errors_by_source(volumes, landmarks, matcher(volumes, maps, {level: stride}))
            scores |= {f"{name}_{level}_only": value for name, value in errors.items() if "mean" in name}
            features = torch.cat([m[level].flatten(1).T for m in maps.values()])
            sample = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:8192]]
            scores[f"rankme_{level}_of_{features.shape[1]}"] = rankme(sample)
        rows += scored(scores, init, seed, "diagnosis")
    result.write_text(json.dumps(rows))
    return rows


def row(task: str, metric: str, init: str, seed: int, value: float) -> dict:
    """One result in label_efficiency's row layout (so its ``summarise`` applies)."""
    return {"task": task, "metric": metric, "init": init, "fraction": 1.0, "seed": seed, "value": value}


def scored(scores: dict[str, float], init: str, seed: int, task: str | None = None) -> list[dict]:
    """Rows of ``{"<task>/<metric>": value}`` (or ``{"<metric>": value}`` with ``task``)."""
    rows = []
    for name, value in scores.items():
        group, metric = (task, name) if task else name.split("/", 1)
        rows.append(row(group, metric, init, seed, value))
    return rows


# -- table and reading --------------------------------------------------------------------------------------
def landmark_metrics() -> list[tuple[str, str]]:
    return [
        (f"{source}/{stat}", f"{source}: {stat.replace('_mm', '')} error (mm)")
        for source in (*SOURCES, "all")
        for stat in ("mean_mm", "median_mm")
    ]


def print_table(summary: list[dict]) -> None:
    """Markdown: landmark errors per source, mean ± std over seeds per initialisation; then the pretraining."""
    index = {(r["task"], r["metric"], r["init"]): r for r in summary}
    print(
        "\n| landmark error | pretrained (teacher) | pretrained (student) | random init | intensity patches "
        "| same scanner position | best voxel |"
    )
    print("|---|---|---|---|---|---|---|")
    for metric, text in landmark_metrics():
        cells = []
        for init in INITS:
            r = index.get(("landmarks", metric, init))
            cells.append("—" if r is None else f"{r['mean']:.1f} ± {r['std']:.1f}")
        print(f"| {text} | " + " | ".join(cells) + " |")
    diagnosis = sorted({metric for (task, metric, _) in index if task == "diagnosis"})
    if diagnosis:
        print("\n| diagnosis | pretrained (teacher) | pretrained (student) | random init |\n|---|---|---|---|")
        for metric in diagnosis:
            cells = [index.get(("diagnosis", metric, init)) for init in ("pretrained", "student", "random")]
            shown = ["—" if r is None else f"{r['mean']:.1f} ± {r['std']:.1f}" for r in cells]
            print(f"| {metric} | " + " | ".join(shown) + " |")
    print("\n| pretraining | mean ± std over seeds |\n|---|---|")
    for (task, metric, _), r in sorted(index.items()):
        if task == "pretrain":
            print(f"| {metric} | {r['mean']:.3f} ± {r['std']:.3f} |")


def paired(rows: list[dict], metric: str, init: str = "pretrained") -> list[float]:
    """``init`` − random landmark error, seed by seed (negative: pretraining helps)."""
    by = {(r["init"], r["seed"]): r["value"] for r in rows if (r["task"], r["metric"]) == ("landmarks", metric)}
    return [by[(init, s)] - by[("random", s)] for (i, s) in by if i == init and ("random", s) in by]


def verdicts(rows: list[dict], mean: dict, init: str) -> list[str]:
    """Per source: does ``init`` match closer than random init in every seed, farther in every seed, or neither."""
    found: dict[str, list[str]] = {"closer": [], "farther": [], "mixed": []}
    for source in (*SOURCES, "all"):
        diffs = paired(rows, f"{source}/mean_mm", init)
        if not diffs:
            continue
        text = (
            f"{source} ({mean[('landmarks', f'{source}/mean_mm', init)]:.1f} vs "
            f"{mean[('landmarks', f'{source}/mean_mm', 'random')]:.1f} mm)"
        )
        kind = "closer" if all(d < 0 for d in diffs) else "farther" if all(d > 0 for d in diffs) else "mixed"
        found[kind].append(text)
    words = {
        "closer": "closer in every seed on",
        "farther": "farther in every seed on",
        "mixed": "no consistent sign on",
    }
    return [f"{words[kind]} {'; '.join(items)}" for kind, items in found.items() if items]


def reading(rows: list[dict], summary: list[dict], args) -> str:
    """Plain words: what the loss did, and per source whether the pretrained teacher (and the student)
    match landmarks closer than their random initialisation in every seed, farther in every seed, or neither."""
    mean = {(r["task"], r["metric"], r["init"]): r["mean"] for r in summary}
    p = {m: mean[(t, m, i)] for (t, m, i) in mean if t == "pretrain"}
    nan = math.nan
    parts = [
        f"Pretraining ({args.correspondence} pairs, {p.get('optimiser_steps', nan):.0f} steps, about "
        f"{p.get('minutes', nan):.0f} min per seed) took train/loss from {p.get('loss_first', nan):.2f} (first "
        f"tenth of the steps) to {p.get('loss_last', nan):.2f} (last tenth); L_rec {p.get('rec_first', nan):.3f} → "
        f"{p.get('rec_last', nan):.3f}, L_cls {p.get('cls_first', nan):.2f} → {p.get('cls_last', nan):.2f}, "
        f"L_patch {p.get('patch_first', nan):.3f} → {p.get('patch_last', nan):.3f}; the teacher's SwinUNETR "
        f"weights moved {p.get('weight_change', nan):.1%} of their norm, the student's "
        f"{p.get('student_weight_change', nan):.1%}."
    ]
    for init, name in (("pretrained", "The pretrained teacher (the exported encoder)"), ("student", "The student")):
        found = verdicts(rows, mean, init)
        if found:
            parts.append(f"{name} vs random init, mean error: {'; '.join(found)}.")
    parts.append(
        f"(With {len(args.seeds)} seeds 'every seed' alone has a sign-test p of {0.5 ** len(args.seeds):.3f}.) "
        "Compare with the same-scanner-position column (the error of not matching at all: the patients differ "
        "by a few degrees, millimetres and per cent) and with the intensity-patch column (raw voxels). The CT "
        "phantom is the same in every axial slice, so along z only the ends of the field of view can tell "
        "slices apart, for every method."
    )
    return " ".join(parts)


def variant(args) -> str:
    """Suffix naming a run's non-default optimisation (``""`` for the defaults, so their cached runs keep
    their names): a variant must not reuse another's cached pretraining, landmarks or results."""
    changed = {"lr": (args.lr, DEFAULT_LR), "m": (args.momentum, DEFAULT_MOMENTUM)}
    return "".join(f"-{name}{value:g}" for name, (value, default) in changed.items() if value != default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/alice-experiment"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cases", type=int, default=8, help="patients per source (half train, half test)")
    parser.add_argument("--epochs", type=int, default=25, help="pretraining epochs (one pair per training volume)")
    parser.add_argument("--warmup-epochs", type=int, default=3, help="LR and teacher-temperature warm-up")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--momentum", type=float, default=DEFAULT_MOMENTUM, help="teacher EMA start (cosine to 1)")
    parser.add_argument("--correspondence", default="same_volume", choices=["same_volume", "body_coordinates"])
    parser.add_argument("--landmarks", type=int, default=100, help="landmarks per held-out pair")
    parser.add_argument("--diagnose", action="store_true", help="per-level errors and RankMe of the features")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = cohort_data(args.out / "data", args.cases)
    volumes = held_out(data["cache"])
    landmarks = {
        pair: pick_landmarks(volumes[pair[0]], volumes[pair[1]], args.landmarks, k)
        for k, pair in enumerate(pairs(volumes))
    }
    print(f"{len(landmarks)} held-out pairs, {sum(len(p) for p in landmarks.values())} landmarks", flush=True)
    rows = []
    for init, scores in baselines(volumes, landmarks, args.out / "baselines").items():
        rows += [r for seed in args.seeds for r in scored(scores, init, seed, "landmarks")]
    print(
        "baselines: "
        + ", ".join(
            f"{init} {s['all/mean_mm']:.1f} mm"
            for init, s in baselines(volumes, landmarks, args.out / "baselines").items()
        ),
        flush=True,
    )
    for seed in args.seeds:
        out = args.out / f"{args.correspondence}{variant(args)}-seed-{seed}"
        print(f"[seed {seed}] pretraining Alice ({args.epochs} epochs, {args.correspondence})", flush=True)
        checkpoint = pretrain(data, out / "pretrain", seed, args)
        found = evaluate(data, checkpoint, out / "pretrain", seed, volumes, landmarks, args)
        rows += found
        if args.diagnose:
            rows += diagnose(checkpoint, out / "pretrain", seed, data, volumes, landmarks, args)
        shown = ", ".join(
            f"{r['init']} {r['metric']} {r['value']:.2f}" for r in found if r["metric"].startswith("all/")
        )
        print(f"[seed {seed}] {shown}", flush=True)
    summary = le.summarise(rows)
    write_csv_atomic(args.out / f"results{variant(args)}.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_csv_atomic(args.out / f"summary{variant(args)}.csv", list(summary[0]), [list(r.values()) for r in summary])
    print_table(summary)
    print("\n" + reading(rows, summary, args))
    print(f"\n(total {(time.perf_counter() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
