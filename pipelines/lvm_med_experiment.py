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

``--gradient-ratio`` instead takes one training step at init on 64 tiles and prints the norms of the
encoder gradient through the vertex affinities and through the edge affinities, and their cosine.
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
    parser.add_argument("--gradient-ratio", action="store_true", help="edge vs vertex gradient at init")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from tests.methods.test_learns_on_real_pixels import lvm_med_from_config, pretrain_and_score

    if args.gradient_ratio:
        return gradient_ratio(lvm_med_from_config, args.seed)
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


def gradient_ratio(make_model, seed: int) -> dict:
    """Encoder gradients of one step at init through each affinity: the vertex path alone is the step with
    ``edge_gradient: 0``; the edge path is the full step (``edge_gradient: 1``) minus it, with the same
    noise and so the same matchings."""
    import torch

    from medssl.synthetic.textures import ihc_texture_tiles
    from tests.methods.test_learns_on_real_pixels import TwoViews

    tiles, _ = ihc_texture_tiles(400, size=32)
    torch.manual_seed(seed)
    model = make_model()
    views = TwoViews(tiles[:64], 32, geometric=True)
    samples = [views[i] for i in range(64)]
    batch = {key: [torch.stack([s[key][k] for s in samples]) for k in range(2)] for key in ("views", "geometry")}
    grads = {}
    for scale in (1.0, 0.0):
        model.hparams.edge_gradient = scale
        model.zero_grad()
        torch.manual_seed(100 + seed)
        model.training_step(batch, 0).backward()
        grads[scale] = torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None])
    vertex, edge = grads[0.0], grads[1.0] - grads[0.0]
    result = {
        "seed": seed,
        "vertex_norm": round(float(vertex.norm()), 3),
        "edge_norm": round(float(edge.norm()), 3),
        "ratio": round(float(edge.norm() / vertex.norm()), 2),
        "cosine": round(float(torch.nn.functional.cosine_similarity(edge, vertex, dim=0)), 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
