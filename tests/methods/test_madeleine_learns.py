"""MADELEINE on real pixels: a small multistain cohort from scikit-image's IHC image (H&E, ER and HER2
slides of 8 cases), tiled, embedded by a random-init ResNet-18, then 40 steps of MADELEINE (InfoNCE and
GOT). The slide encoder must learn to tell which IHC slide belongs to which H&E slide: the InfoNCE over
the cases falls from chance (log 8 per stain) to under 40 % of it (11–28 % over seeds 0–3 on another
draw of cases). That is alignment of the training cases; what the embeddings are worth on held-out
cases is measured by pipelines/madeleine_experiment.py (docs/methods/madeleine.md), not here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.data.bags import StainSetDataset, collate_stain_sets
from medssl.methods.madeleine import Madeleine

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def multistain(tmp_path_factory) -> dict:
    from medssl.export.embeddings import embed_cache
    from medssl.nn.backbones import build_encoder
    from medssl.preprocess.tile import TilingParams, tile_slides
    from medssl.synthetic.multistain import write_multistain_cohort

    folder = tmp_path_factory.mktemp("multistain")
    csv = write_multistain_cohort(
        folder / "slides", n_cases=8, stains=("HE", "ER", "HER2"), missing=0.0, size=(768, 576)
    )
    summary = tile_slides([csv], folder / "cache", TilingParams(target_mpp=1.0, tile_size=32), progress=False)
    assert not summary.failed
    torch.manual_seed(0)
    encoder = build_encoder(name="resnet18", in_channels=3, width=0.5)
    embed_cache(encoder, folder / "cache", folder / "features", batch_size=512, progress=False)
    return {"cache": folder / "cache", "features": folder / "features", "in_dim": encoder.out_dim}


def test_madeleine_learns_which_ihc_slide_belongs_to_which_he_slide(multistain):
    cases = StainSetDataset(multistain["cache"], multistain["features"], tokens=32)
    assert len(cases) == 8 and cases.stains == ["HE", "ER", "HER2"]
    torch.manual_seed(0)
    model = Madeleine(
        in_dim=multistain["in_dim"],
        hidden_dim=64,
        heads=2,
        embed_dim=64,
        token_dim=32,
        stains=cases.stains,
        input_norm=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        terms, _ = model.alignment_losses(collate_stain_sets([cases[(i, step)] for i in range(len(cases))]))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["info_nce"]) / 2)  # per stain
    assert losses[0] == pytest.approx(math.log(8), abs=0.25)  # an untrained encoder can hardly tell cases apart
    assert np.mean(losses[-5:]) < 0.4 * math.log(8)
