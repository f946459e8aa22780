"""``medssl embed-slides``: a MADELEINE checkpoint trained through the stain-set DataModule pools each H&E
slide's patch features into one embedding, resumably; ``medssl probe`` reads the folder one row per slide."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from medssl.cache import EmbeddingCache, SlideCache
from medssl.cli import main
from medssl.data import StainSetDataModule
from medssl.errors import InputError
from medssl.methods.madeleine import Madeleine
from medssl.tasks.probes import load_probe_set
from medssl.tasks.slide_embeddings import embed_slides
from tests.data.test_volumes_and_bags import write_row_features

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")


@pytest.fixture(scope="module")
def trained(cohort_cache, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("madeleine")
    write_row_features(cohort_cache, folder / "features", dim=8)
    data = StainSetDataModule(str(cohort_cache), str(folder / "features"), tokens=6, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    model = Madeleine(in_dim=8, hidden_dim=6, heads=2, embed_dim=5, token_dim=4, stains=["HE", "IHC"])
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=folder
    )
    trainer.fit(model, datamodule=data)
    assert data.stains == ["HE", "IHC"] and len(data.datasets["train"]) == 1  # case-1 (case-2 has H&E only)
    trainer.save_checkpoint(folder / "madeleine.ckpt")
    return {"checkpoint": folder / "madeleine.ckpt", "features": folder / "features", "folder": folder}


def test_embed_slides_pools_every_patch_of_each_he_slide_and_resumes(cohort_cache, trained, capsys):
    out = trained["folder"] / "slides"
    args = ["embed-slides", str(trained["checkpoint"]), "--cache", str(cohort_cache), "--features"]
    args += [str(trained["features"]), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "2 slides embedded (5-d)" in capsys.readouterr().out
    stored, patches = EmbeddingCache(out), EmbeddingCache(trained["features"])
    assert sorted(stored.ids) == ["c1-he", "c2-he"] and stored.params["level"] == "slide"
    model = Madeleine.load_from_checkpoint(trained["checkpoint"]).eval()
    for slide_id in stored.ids:
        rows = torch.from_numpy(np.asarray(patches.features(slide_id)[:]))
        with torch.inference_mode():
            expected = model.slide_embedding(rows).numpy()
        np.testing.assert_allclose(stored.features(slide_id)[:], expected[None], rtol=1e-5, atol=1e-6)
        meta = stored.metadata(slide_id)
        assert meta["stain"] == "HE" and meta["label"] == SlideCache(cohort_cache).metadata(slide_id)["label"]
    assert main(args) == 0
    assert "0 slides embedded (5-d), 2 already complete" in capsys.readouterr().out
    with pytest.raises(InputError, match="not \\['PAS'\\]"):
        embed_slides(trained["checkpoint"], cohort_cache, trained["features"], out, stains=["PAS"])


def test_probe_reads_one_row_per_slide_and_filters_stains(cohort_cache, trained):
    out = trained["folder"] / "probe-slides"
    embed_slides(trained["checkpoint"], cohort_cache, trained["features"], out, progress=False)
    per_slide = load_probe_set(out, cohort_cache, level="slide")
    assert per_slide.x.shape == (2, 5) and per_slide.labels == ["tumor", "normal"]
    with pytest.raises(InputError, match="--level slide"):
        load_probe_set(out, cohort_cache, level="tile")
    pooled = load_probe_set(trained["features"], cohort_cache, level="slide", stains=["HE"])
    ids = SlideCache(cohort_cache).ids
    mean_c2 = np.asarray(EmbeddingCache(trained["features"]).features("c2-he")[:]).mean(0)
    assert pooled.x.shape == (2, 8) and "c1-ihc" in ids
    np.testing.assert_allclose(pooled.x[1].numpy(), mean_c2, rtol=1e-6)
