"""Does MADELEINE's multistain pretraining give better H&E slide embeddings than mean pooling, few-shot?

The cohort (``medssl.synthetic.multistain.write_multistain_cohort``): per case one tissue layout from
real IHC pixels (scikit-image), rendered as H&E and as ER, PR, HER2 and Ki-67 IHC slides, registered up
to a small rigid motion; positive cases have marker-positive regions, clearly brown in ER and PR, only a
slightly darker haematoxylin (``he_cue``) in H&E; HER2 and Ki-67 are distractors unrelated to the label;
each IHC slide is missing with probability 0.2. Half the cases pretrain (all their stains), the other half
are held out for the few-shot evaluation (their H&E slides only).

Steps: ``medssl tile`` (1 µm/px, 32-px tiles) → ``medssl embed`` with a random-init ResNet-18 (no
pretrained pathology weights can be downloaded here) → per seed, ``medssl fit --config
configs/pretrain/madeleine.yaml`` on the pretraining cases → H&E slide embeddings of the held-out cases
(``medssl embed-slides`` from the last checkpoint, ``seed-<s>/slide-embeddings``; every stain's slides in
``seed-<s>/slide-embeddings-all-stains``, for cross-stain retrieval, below) → the few-shot protocol of the paper
(:func:`medssl.eval.probes.few_shot_rest`: logistic regression C = 1 on k ∈ {1, 10, 25} slides per class,
every other held-out slide as test, 10 folds with seed = fold, AUROC mean ± std over folds) for:

- MADELEINE's slide embeddings (per seed; the table gives the mean over seeds of the fold mean, and the
  spread over seeds);
- the same slide encoder untrained (random init, per seed): what attention pooling gives without
  pretraining;
- mean pooling of the same H&E patch features (deterministic);
- ABMIL trained on the k shots of each fold (slide labels only; seed = fold).

Cross-stain retrieval (``results.json``'s ``retrieval``; no labels): for each held-out H&E slide, the
slides of each other stain of the held-out cases ranked by cosine similarity; top-1 and top-3 same-case
accuracy per stain and what a random ranking gives (:func:`medssl.eval.retrieval.cross_stain_retrieval`),
for MADELEINE's slide embeddings (per seed) and for mean pooling of the patch features.

    python pipelines/madeleine_experiment.py --out runs/madeleine-experiment --cases 160 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "madeleine.yaml"
RANKME = "medssl.methods.callbacks.RankMeCheckpoint"
SHOTS = (1, 10, 25)


def prepare_cohort(out: Path, n_cases: int, he_cue: float = 0.2, size: int = 1536, seed: int = 0) -> dict:
    """Write, tile and embed the cohort (pretraining cases: split ``train``; held out: ``test``)."""
    import torch

    from medssl.cli import main as medssl_main
    from medssl.export.embeddings import embed_cache
    from medssl.nn.backbones import build_encoder
    from medssl.synthetic.multistain import write_multistain_cohort

    cohort = write_multistain_cohort(
        out / "slides", n_cases=n_cases, he_cue=he_cue, size=(size, size * 3 // 4), splits=("train", "test"), seed=seed
    )
    status = medssl_main(
        ["tile", str(cohort), "--out", str(out / "cache"), "--mpp", "1.0", "--tile-size", "32", "--quiet"]
    )
    if status:
        raise SystemExit(f"tiling failed (status {status})")
    torch.manual_seed(seed)
    encoder = build_encoder(name="resnet18", in_channels=3, width=0.5)
    embed_cache(encoder, out / "cache", out / "embeddings", batch_size=512, progress=False)
    return {"cache": out / "cache", "features": out / "embeddings", "in_dim": encoder.out_dim}


def pretrain(
    cohort: dict,
    out: Path,
    seed: int,
    epochs: int,
    tokens: int,
    batch_size: int,
    width: int,
    input_norm: bool,
    extra=(),
) -> Path:
    """``medssl fit --config configs/pretrain/madeleine.yaml`` on the pretraining cases; the checkpoint that
    RankMe chose (the paper's label-free rule, after half the epochs)."""
    from medssl.cli import run_lightning

    root = out / f"seed-{seed}"
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--seed_everything",
            str(seed),
            "--data.init_args.cache",
            str(cohort["cache"]),
            "--data.init_args.features",
            str(cohort["features"]),
            "--data.init_args.tokens",
            str(tokens),
            "--data.init_args.batch_size",
            str(batch_size),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.val_split",
            "null",
            "--data.init_args.test_split",
            "null",
            "--model.init_args.in_dim",
            str(cohort["in_dim"]),
            "--model.init_args.hidden_dim",
            str(width),
            "--model.init_args.embed_dim",
            str(width),
            "--model.init_args.input_norm",
            str(input_norm).lower(),
            "--model.init_args.warmup_epochs",
            str(max(1, epochs // 10)),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.callbacks",
            json.dumps([{"class_path": RANKME, "init_args": {"warmup_epochs": epochs // 2}}]),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.log_every_n_steps",
            "1",
            *extra,
        ]
    )
    chosen = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RankMeCheckpoint")
    print(f"seed {seed}: RankMe chose epoch {chosen.best_epoch} ({chosen.best_rankme:.1f})", file=sys.stderr)
    return Path(chosen.best_path)


def held_out(cohort: dict) -> tuple[list[str], np.ndarray, list[str]]:
    """The held-out H&E slides, their labels (1 = positive) and cases."""
    from medssl.cache import SlideCache

    cache = SlideCache(cohort["cache"])
    ids = [s for s in cache.ids if cache.metadata(s).get("stain") == "HE" and cache.metadata(s).get("split") == "test"]
    labels = np.array([cache.metadata(s)["label"] == "positive" for s in ids], dtype=np.int64)
    return ids, labels, [str(cache.metadata(s)["case_id"]) for s in ids]


def patch_features(cohort: dict, ids: list[str]) -> list[np.ndarray]:
    from medssl.cache import EmbeddingCache

    embeddings = EmbeddingCache(cohort["features"])
    return [np.asarray(embeddings.features(s)[:], dtype=np.float32) for s in ids]


def slide_embeddings(checkpoint: Path, cohort: dict, out: Path, ids: list[str]) -> np.ndarray:
    """``medssl embed-slides`` (H&E) from ``checkpoint``, read back for ``ids``."""
    from medssl.cache import EmbeddingCache
    from medssl.cli import main as medssl_main

    folder = out / "slide-embeddings"
    status = medssl_main(
        [
            "embed-slides",
            str(checkpoint),
            "--cache",
            str(cohort["cache"]),
            "--features",
            str(cohort["features"]),
            "--out",
            str(folder),
            "--overwrite",
            "--quiet",
        ]
    )
    if status:
        raise SystemExit(f"embed-slides failed (status {status})")
    embeddings = EmbeddingCache(folder)
    return np.concatenate([np.asarray(embeddings.features(s)[:], dtype=np.float32) for s in ids])


def all_stain_embeddings(checkpoint: Path, cohort: dict, out: Path, ids: list[str]) -> np.ndarray:
    """``medssl embed-slides`` of every stain in the cohort into ``out/slide-embeddings-all-stains`` (the
    slide encoder over stored patch features: cheap), read back for ``ids``. It embeds the pretraining
    cases' slides too (embed-slides takes no split): they show what the alignment fit, the held-out ones
    what it learned."""
    from medssl.cache import EmbeddingCache, SlideCache
    from medssl.cli import main as medssl_main

    folder = out / "slide-embeddings-all-stains"
    stains = sorted({str(m.get("stain")) for m in SlideCache(cohort["cache"]).items().values() if m.get("stain")})
    status = medssl_main(
        ["embed-slides", str(checkpoint), "--cache", str(cohort["cache"]), "--features", str(cohort["features"])]
        + ["--out", str(folder), "--overwrite", "--quiet", *(a for stain in stains for a in ("--stain", stain))]
    )
    if status:
        raise SystemExit(f"embed-slides (all stains) failed (status {status})")
    embeddings = EmbeddingCache(folder)
    return np.concatenate([np.asarray(embeddings.features(s)[:], dtype=np.float32) for s in ids])


def held_out_slides(cohort: dict) -> tuple[list[str], list[str], list[str]]:
    """Every held-out slide (all stains), its stain and its case."""
    from medssl.cache import SlideCache

    items = {s: m for s, m in SlideCache(cohort["cache"]).items().items() if m.get("split") == "test"}
    return list(items), [str(m.get("stain")) for m in items.values()], [str(m.get("case_id")) for m in items.values()]


def retrieval(vectors: np.ndarray, stains: list[str], cases: list[str]) -> list[dict]:
    """Per IHC stain: top-1 / top-3 same-case retrieval of the held-out H&E slides, and chance."""
    from medssl.eval.retrieval import cross_stain_retrieval

    return cross_stain_retrieval(vectors, stains, cases, reference="HE", ks=(1, 3))


def untrained_embeddings(checkpoint: Path, bags: list[np.ndarray], seed: int) -> np.ndarray:
    """A random initialisation (seeded) of the same slide encoder configuration, never trained."""
    import torch

    from medssl.methods.madeleine import Madeleine
    from medssl.tasks.checkpoints import load_medssl_model

    trained = load_medssl_model(checkpoint, Madeleine, "a MADELEINE checkpoint")
    torch.manual_seed(seed)
    model = Madeleine(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")}).eval()
    with torch.inference_mode():
        return np.stack([model.slide_embedding(torch.from_numpy(bag)).numpy() for bag in bags])


def abmil_probe(bags: list[np.ndarray], epochs: int = 15):
    """A few-shot "probe" that trains ABMIL on the drawn slides' bags (slide labels only) and scores the
    rest; ``x`` rows carry slide indices (``few_shot_rest`` hands the probe rows of ``x``)."""
    import torch
    import torch.nn.functional as F

    from medssl.methods.abmil import ABMIL

    def probe(train_x, train_y, test_x, num_classes):
        torch.manual_seed(len(train_x))
        model = ABMIL(in_dim=bags[0].shape[1], hidden_dim=128, attention_dim=64)
        optimiser = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
        train = [int(i) for i in train_x[:, 0]]
        model.train()
        for _ in range(epochs):
            for i in np.random.default_rng(len(train)).permutation(train):
                logits, _ = model(torch.from_numpy(bags[i])[None])
                loss = F.cross_entropy(logits, train_y[train.index(i)].view(1))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.inference_mode():
            return torch.cat([model(torch.from_numpy(bags[int(i)])[None])[0].softmax(-1) for i in test_x[:, 0]])

    return probe


def few_shot_auroc(x, labels, cases, probe, shots, folds) -> dict[int, dict]:
    import torch

    from medssl.eval.probes import few_shot_rest

    results = few_shot_rest(torch.as_tensor(x), torch.as_tensor(labels), shots, folds, probe, cases, num_classes=2)
    return {
        k: r if "skipped" in r else {"mean": r["mean"]["auroc"], "std": r["std"]["auroc"]} for k, r in results.items()
    }


def table(rows: dict[str, list[dict]], shots) -> str:
    """Markdown: per representation and k, the mean over seeds of the fold-mean AUROC ± the std over seeds
    (and the mean fold std), or the single run's fold mean ± fold std."""
    lines = [
        "| slide representation | " + " | ".join(f"k = {k}" for k in shots) + " |",
        "|---" * (len(shots) + 1) + "|",
    ]
    for name, runs in rows.items():
        cells = []
        for k in shots:
            values = [run[k] for run in runs if "mean" in run[k]]
            if not values:
                cells.append("skipped")
                continue
            means = np.array([v["mean"] for v in values])
            folds = np.mean([v["std"] for v in values])
            spread = f" ± {means.std(ddof=1):.3f} (seeds)" if len(means) > 1 else ""
            cells.append(f"{means.mean():.3f}{spread}; folds ± {folds:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    cohort = prepare_cohort(out, args.cases, args.he_cue, args.size)
    ids, labels, cases = held_out(cohort)
    bags = patch_features(cohort, ids)
    index = np.arange(len(ids), dtype=np.float32)[:, None]
    print(f"held out: {len(ids)} H&E slides ({int(labels.sum())} positive); {args.seeds} seeds", file=sys.stderr)
    rows: dict[str, list[dict]] = {
        "mean pooling (H&E patch features)": [
            few_shot_auroc(np.stack([b.mean(0) for b in bags]), labels, cases, "logistic", args.shots, args.folds)
        ]
    }
    rows["MADELEINE slide encoder, untrained"] = []
    rows["MADELEINE (multistain pretrained)"] = []
    every, stains, every_case = held_out_slides(cohort)
    found = {
        "mean pooling (patch features)": [
            retrieval(np.stack([b.mean(0) for b in patch_features(cohort, every)]), stains, every_case)
        ]
    }
    found["MADELEINE (multistain pretrained)"] = []
    for seed in args.seeds:
        checkpoint = pretrain(
            cohort, out, seed, args.epochs, args.tokens, args.batch_size, args.width, args.input_norm, args.extra
        )
        trained = slide_embeddings(checkpoint, cohort, out / f"seed-{seed}", ids)
        rows["MADELEINE (multistain pretrained)"].append(
            few_shot_auroc(trained, labels, cases, "logistic", args.shots, args.folds)
        )
        vectors = all_stain_embeddings(checkpoint, cohort, out / f"seed-{seed}", every)
        found["MADELEINE (multistain pretrained)"].append(retrieval(vectors, stains, every_case))
        untrained = untrained_embeddings(checkpoint, bags, seed)
        rows["MADELEINE slide encoder, untrained"].append(
            few_shot_auroc(untrained, labels, cases, "logistic", args.shots, args.folds)
        )
        save(out, args, rows, found)  # after each seed: a stopped run keeps what it measured
    if args.abmil:
        rows["ABMIL on the k shots"] = [
            few_shot_auroc(index, labels, cases, abmil_probe(bags, args.abmil_epochs), args.shots, args.folds)
        ]
    return save(out, args, rows, found)


def save(out: Path, args: argparse.Namespace, rows: dict[str, list[dict]], found: dict[str, list[list[dict]]]) -> dict:
    """``results.json``: settings, few-shot rows and table, and cross-stain retrieval (per representation, one
    list of per-stain rows per seed)."""
    results = {"settings": dict(vars(args)), "rows": rows, "table": table(rows, args.shots), "retrieval": found}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/madeleine-experiment")
    p.add_argument("--cases", type=int, default=160, help="cases in all; half pretrain, half are held out")
    p.add_argument("--he-cue", type=float, default=0.2, help="how much darker H&E nuclei are in positive regions")
    p.add_argument("--size", type=int, default=1536, help="slide width in level-0 pixels (0.5 µm/px; 3:4 aspect)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--tokens", type=int, default=64, help="patch features per slide per step (resampled)")
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--width", type=int, default=128, help="the slide encoder's hidden and embedding width (paper: 512)")
    p.add_argument(
        "--no-input-norm",
        dest="input_norm",
        action="store_false",
        help="feed the random-init ResNet's features as they are (the paper's model; its slides then differ by "
        "a few per cent of a common vector and MADELEINE does not move off chance)",
    )
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--no-abmil", dest="abmil", action="store_false", help="skip the ABMIL few-shot baseline")
    p.add_argument("--abmil-epochs", type=int, default=15, help="ABMIL epochs over the k shots of each fold")
    p.add_argument("extra", nargs="*", help="more medssl fit flags for MADELEINE, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    results = run(parser().parse_args(argv))
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
