"""``medssl embed-slides``: a MADELEINE checkpoint trained through the stain-set DataModule pools each H&E
slide's patch features into one embedding, resumably; ``medssl probe`` reads the folder one row per slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.cache import EmbeddingCache, SlideCache
from medssl.cli import main, run_lightning
from medssl.data import StainSetDataModule
from medssl.errors import InputError
from medssl.methods.madeleine import Madeleine
from medssl.tasks.probes import load_probe_set
from medssl.tasks.slide_embeddings import embed_slides
from tests.data.test_volumes_and_bags import write_row_features

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")


CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "madeleine.yaml"


@pytest.fixture(scope="module")
def trained(cohort_cache, tmp_path_factory) -> dict:
    """``medssl fit --config configs/pretrain/madeleine.yaml`` at toy size on the cohort cache's features."""
    folder = tmp_path_factory.mktemp("madeleine")
    write_row_features(cohort_cache, folder / "features", dim=8)
    small = {"in_dim": 8, "hidden_dim": 6, "heads": 2, "embed_dim": 5, "token_dim": 4}
    cli = run_lightning(
        [
            *("fit", "--config", str(CONFIG), "--data.init_args.cache", str(cohort_cache)),
            *("--data.init_args.features", str(folder / "features"), "--data.init_args.stains", "[HE, IHC]"),
            *("--data.init_args.tokens", "6", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"),
            *(arg for name, value in small.items() for arg in (f"--model.init_args.{name}", str(value))),
            *("--model.init_args.stains", "[HE, IHC]", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu"),
            *("--trainer.default_root_dir", str(folder), "--trainer.enable_progress_bar", "false"),
        ]
    )
    data = cli.datamodule
    assert isinstance(data, StainSetDataModule) and isinstance(cli.model, Madeleine)
    assert data.stains == ["HE", "IHC"] and len(data.datasets["train"]) == 1  # case-1 (case-2 has H&E only)
    assert "train/loss" in cli.trainer.callback_metrics
    assert any(type(c).__name__ == "RankMeCheckpoint" for c in cli.trainer.callbacks)  # from the config
    checkpoint = Path(cli.trainer.checkpoint_callback.best_model_path)
    return {"checkpoint": checkpoint, "features": folder / "features", "folder": folder}


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
