"""Reading slide-level results back: ROC points, `medssl heatmap`'s per-tile scores joined with tile
truth in the cache's order, and the top-scoring tiles."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from medssl.errors import InputError
from medssl.eval.classification import roc_curve
from medssl.eval.slides import (
    align_to_tiles,
    read_instance_scores,
    read_slide_scores,
    read_tile_truth,
    top_tiles,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_scikit_learn_with_ties_and_unknown_truth(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 60) / 5.0  # many ties
    truth = (rng.random(60) < 0.4).astype(np.float64)
    truth[rng.random(60) < 0.1] = np.nan
    curve = roc_curve(scores, truth)
    assert curve is not None
    known = ~np.isnan(truth)
    fpr, tpr, thresholds = sklearn_roc_curve(truth[known], scores[known], drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    np.testing.assert_array_equal(curve["thresholds"], thresholds)
    assert curve["auroc"] == pytest.approx(roc_auc_score(truth[known], scores[known]))


def test_roc_curve_by_hand_and_when_undefined():
    curve = roc_curve([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0])
    assert curve is not None
    np.testing.assert_allclose(curve["fpr"], [0, 0, 0.5, 1])
    np.testing.assert_allclose(curve["tpr"], [0, 0.5, 1, 1])
    assert curve["auroc"] == pytest.approx(0.875)  # 3 pairs right, 1 tied (counts half), of 4
    assert roc_curve([0.2, 0.9], [1, 1]) is None  # one class: two positive slides make no curve
    assert roc_curve([0.2, np.nan], [1, 0]) is None  # the only negative is unscored
    with pytest.raises(ValueError, match="3 scores for 2"):
        roc_curve([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        roc_curve([0.1, 0.2], [0, 2])


def test_align_to_tiles_matches_corners_not_order():
    tiles = np.array([[0, 0], [448, 0], [0, 448], [448, 448]])
    aligned = align_to_tiles(tiles[[3, 0, 1]], [0.3, 0.0, 0.1], tiles)
    np.testing.assert_array_equal(aligned, [0.0, 0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"1 scored corners are not tiles of the slide, e.g. \(896, 0\)"):
        align_to_tiles([[896, 0], [0, 0]], [1.0, 2.0], tiles)


def write_heatmap_output(folder, slide_id, rows, column="instance_probability"):
    (folder / "scores").mkdir(parents=True, exist_ok=True)
    lines = [f"x,y,{column}", *(f"{x},{y},{s}" for x, y, s in rows)]
    (folder / "scores" / f"{slide_id}.csv").write_text("\n".join(lines) + "\n")


def test_read_slide_scores_joins_scores_and_tile_truth_in_cache_order(tmp_path):
    tiles = np.array([[0, 0], [448, 0], [0, 448], [448, 448]])
    write_heatmap_output(tmp_path, "s1", [(448, 448, 0.9), (0, 0, 0.2), (448, 0, 0.4), (0, 448, 0.5)])
    labels = tmp_path / "tile_labels.csv"
    labels.write_text("slide_id,tile,label\ns1,0,normal\ns1,3,lesion\ns2,0,normal\ns1,1,normal\n")
    truth = read_tile_truth(labels)
    np.testing.assert_array_equal(truth["s1"], [0, 0, np.nan, 1])
    np.testing.assert_array_equal(truth["s2"], [0])
    record = read_slide_scores(tmp_path, "s1", tiles, truth["s1"])
    assert record["name"] == "instance_probability"
    np.testing.assert_array_equal(record["scores"], [0.2, 0.4, 0.5, 0.9])
    np.testing.assert_array_equal(record["coords"], tiles)
    np.testing.assert_array_equal(record["truth"], [0, 0, np.nan, 1])
    # truth listing fewer tiles than the slide has is padded with unknown
    np.testing.assert_array_equal(read_slide_scores(tmp_path, "s1", tiles, truth["s2"])["truth"], [0, *[np.nan] * 3])
    assert np.isnan(read_slide_scores(tmp_path, "s1", tiles)["truth"]).all()  # no truth: all unknown
    write_heatmap_output(tmp_path, "s1", [(0, 0, 0.2)])
    with pytest.raises(InputError, match="tile labels list tile 3 of s1, which has 2 tiles"):
        read_slide_scores(tmp_path, "s1", tiles[:2], truth["s1"])


def test_readers_name_the_file_and_the_reason(tmp_path):
    tiles = np.array([[0, 0]])
    write_heatmap_output(tmp_path, "s", [(0, 0, 0.5), (896, 0, 0.1)])
    with pytest.raises(InputError, match=r"s\.csv: 1 scored corners are not tiles.*from this cache"):
        read_slide_scores(tmp_path, "s", tiles)
    with pytest.raises(InputError, match=r"missing\.csv: cannot read instance scores"):
        read_slide_scores(tmp_path, "missing", tiles)
    bad = tmp_path / "bad.csv"
    bad.write_text("tile,score\n0,0.5\n")
    with pytest.raises(InputError, match=r"bad\.csv: not a `medssl heatmap` scores file"):
        read_instance_scores(bad)
    bad.write_text("x,y,attention_logit\n0,0,high\n")
    with pytest.raises(InputError, match=r"bad\.csv: a row is not three numbers"):
        read_instance_scores(bad)
    bad.write_text("slide_id,tile,label\ns,0,tumour\n")
    with pytest.raises(InputError, match=r"bad\.csv, line 2: tile '0' labelled 'tumour'; expected"):
        read_tile_truth(bad)
    bad.write_text("slide,tile\ns,0\n")
    with pytest.raises(InputError, match=r"bad\.csv: tile labels need columns slide_id, tile, label"):
        read_tile_truth(bad)


def test_top_tiles_highest_first_ties_by_index_nan_never():
    scores = np.array([0.2, np.nan, 0.9, 0.5, 0.9])
    np.testing.assert_array_equal(top_tiles(scores, 3), [2, 4, 3])
    np.testing.assert_array_equal(top_tiles(scores, 10), [2, 4, 3, 0])
    assert len(top_tiles(scores, 0)) == 0
