"""Slide labels only, real pixels: on a generated cohort (IHC tissue; retina-texture lesions in half of
the slides), INS and ABMIL trained through ``medssl fit`` with ``configs/mil/*.yaml`` find the positive
slides, and INS's instance probabilities localise lesion tiles better than ABMIL's attention does.

This runs ``pipelines/mil_experiment.py`` itself (32 slides, 30 epochs, seed 0). Across seeds 0/1/2 the
README's table gives instance AUROC INS 0.949/0.813/0.936 against ABMIL attention 0.594/0.797/0.656, so
the ordering holds in every seed measured, but by a thin margin in seed 1; the assertion below uses seed 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pipelines"))
from mil_experiment import main as run_experiment  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_ins_localises_lesions_better_than_abmil_attention_from_slide_labels(tmp_path):
    assert run_experiment(["--out", str(tmp_path), "--slides", "32", "--epochs", "30", "--seed", "0"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    abmil, ins = results["ABMIL"], results["INS"]
    assert abmil["bag_auroc"] >= 0.9 and ins["bag_auroc"] >= 0.9  # chance is 0.5
    assert ins["instance_auroc"] >= 0.85
    assert ins["instance_auroc"] > abmil["instance_auroc"] + 0.1
    assert (Path(ins["results"]) / "heatmaps").is_dir() and (Path(ins["results"]) / "metrics.json").exists()
