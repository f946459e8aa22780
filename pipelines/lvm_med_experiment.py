"""LVM-Med on real-pixel tiles, one variant and one seed at a time: the setup of
``tests/methods/test_learns_on_real_pixels.py`` (ResNet-18 at width 0.25, 32-px IHC tiles, 25 epochs of
6 steps, the model built from ``configs/pretrain/lvm_med_tiles.yaml``), printing kNN accuracy on
re-stained held-out tiles at random init and after pretraining.

    OMP_NUM_THREADS=1 python pipelines/lvm_med_experiment.py --variant edge-stop --seed 0
    python pipelines/lvm_med_experiment.py --variant first-order --seed 1 --epochs 40 --json runs.jsonl

Variants (overrides of the config's ``init_args``):

``config``       the shipped config as it is
``edge-full``    ``edge_gradient: 1`` (the paper's I-MLE: the loss trains through the edge affinities)
``edge-stop``    ``edge_gradient: 0`` (the edges shape every solve but pass no gradient)
``edge-0.05``    ``edge_gradient: 0.05`` (the edge path's gradient scaled by 1/20, about its ratio to
                 the vertex path's at init)
``first-order``  ``second_order``, ``message_passing``, ``local_cost`` off (linear assignment of the
                 global cosine affinity)
``*-t0.3``       the same at noise temperature 0.3 (``noise_scale``; 1 is the paper's Gumbel(0, 1))
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    "config": {},
    "edge-full": {"edge_gradient": 1.0},
    "edge-stop": {"edge_gradient": 0.0},
    "edge-0.05": {"edge_gradient": 0.05},
    "first-order": {"second_order": False, "message_passing": False, "local_cost": False},
}
VARIANTS |= {f"{name}-t0.3": {**overrides, "noise_scale": 0.3} for name, overrides in list(VARIANTS.items())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from tests.methods.test_learns_on_real_pixels import lvm_med_from_config, pretrain_and_score

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        before, after, trainer = pretrain_and_score(
            lambda: lvm_med_from_config(**VARIANTS[args.variant]),
            geometric=True,
            tmp_path=tmp,
            seed=args.seed,
            epochs=args.epochs,
        )
    matched = trainer.callback_metrics.get("train/matched")
    result = {
        "variant": args.variant,
        "seed": args.seed,
        "epochs": args.epochs,
        "knn_init": round(before, 4),
        "knn_pretrained": round(after, 4),
        "last_matched": None if matched is None else round(float(matched), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
