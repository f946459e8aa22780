"""The multistain cohort (MADELEINE's data): one H&E and several IHC sections per case from real pixels,
registered up to a small motion, the label visible in ER/PR and only subtly in H&E."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.color import rgb2hed

from medssl.cache import SlideCache
from medssl.preprocess import TilingParams, tile_slides
from medssl.preprocess.tissue import saturation
from medssl.synthetic import write_multistain_cohort
from medssl.synthetic.multistain import (
    DEFAULT_STAINS,
    HE,
    RigidMotion,
    StainedSection,
    present_stains,
    random_case,
)
from medssl.synthetic.slides import sample_texture

COLUMNS = ["slide_id", "path", "case_id", "stain", "label", "split"]
BROWN = 0.03  #: rgb2hed DAB density above which a pixel is clearly brown


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def full_cohort(tmp_path_factory) -> Path:
    """Six cases (three positive) with every stain, small enough to write in about a second."""
    folder = tmp_path_factory.mktemp("multistain")
    return write_multistain_cohort(folder, n_cases=6, missing=0.0, size=(768, 576), seed=0)


@pytest.fixture(scope="module")
def level_one(full_cohort) -> dict[str, np.ndarray]:
    """Every slide's 4× downsampled page (2 µm/px), by slide id."""
    return {r["slide_id"]: tifffile.imread(full_cohort.parent / r["path"], key=1) for r in read_rows(full_cohort)}


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    return saturation(rgb) > 10  # glass is grey (saturation ~4); every stain here colours all tissue


def brown_fraction(rgb: np.ndarray) -> float:
    return float((rgb2hed(rgb)[..., 2][tissue_mask(rgb)] > BROWN).mean())


def test_the_csv_lists_exactly_the_written_slides_with_cases_kept_whole(tmp_path):
    manifest = write_multistain_cohort(tmp_path, n_cases=8, missing=0.5, size=(384, 288), seed=3)
    rows = read_rows(manifest)
    assert list(rows[0]) == COLUMNS
    cases = sorted({r["case_id"] for r in rows})
    assert len(cases) == 8
    for row in rows:
        assert row["slide_id"] == f"{row['case_id']}_{row['stain']}"
        assert row["path"] == f"{row['slide_id']}.tiff" and (tmp_path / row["path"]).is_file()
        assert (tmp_path / "masks" / f"{row['slide_id']}.png").is_file()
    # missing stains are really missing: no file without a row, and at missing=0.5 some are absent
    assert sorted(p.name for p in tmp_path.glob("*.tiff")) == sorted(r["path"] for r in rows)
    assert 8 * 2 <= len(rows) < 8 * len(DEFAULT_STAINS)
    labels = []
    for case in cases:
        mine = [r for r in rows if r["case_id"] == case]
        stains = [r["stain"] for r in mine]
        assert stains[0] == HE and len(stains) >= 2  # H&E always, at least one IHC stain
        assert len({r["split"] for r in mine}) == 1 and len({r["label"] for r in mine}) == 1
        labels.append(mine[0]["label"])
    assert labels.count("positive") == labels.count("negative") == 4
    splits = {r["case_id"]: r["split"] for r in rows}
    assert set(splits.values()) == {"train", "val", "test"}
    # resumable: a second run keeps every slide and writes the same CSV
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tiff")}
    again = write_multistain_cohort(tmp_path, n_cases=8, missing=0.5, size=(384, 288), seed=3)
    assert read_rows(again) == rows
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tiff")} == stamps
    assert not list(tmp_path.glob(".*partial"))


def test_missing_stains_keep_he_and_at_least_one_ihc_stain_at_the_asked_rate():
    rng = np.random.default_rng(0)
    draws = [present_stains(DEFAULT_STAINS, 0.3, rng) for _ in range(2000)]
    assert all(d[0] == HE and len(d) >= 2 for d in draws)
    assert all(d == [s for s in DEFAULT_STAINS if s in d] for d in draws)  # order kept
    missing_rate = 1 - np.mean([len(d) - 1 for d in draws]) / 4
    assert missing_rate == pytest.approx(0.3 * (1 - 0.3**3), abs=0.02)  # all-four-missing draws keep one
    assert present_stains(DEFAULT_STAINS, 0.999, rng)[0] == HE
    assert present_stains(("HE",), 0.5, rng) == [HE]


def test_bad_stain_lists_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must include 'HE'"):
        write_multistain_cohort(tmp_path, n_cases=1, stains=("ER", "PR"))
    with pytest.raises(ValueError, match="unknown stain 'CD8'"):
        write_multistain_cohort(tmp_path, n_cases=1, stains=("HE", "CD8"))


def test_a_cases_sections_show_the_same_tissue_up_to_a_small_motion(level_one):
    """Tissue masks overlap highly within a case, less across cases; the haematoxylin structure (glands,
    nuclei crowds: blurred beyond the misregistration) correlates within a case, not across cases."""
    masks = {k: tissue_mask(v) for k, v in level_one.items()}
    nuclei = {k: ndimage.gaussian_filter(rgb2hed(v)[..., 0], 6) for k, v in level_one.items()}

    def iou(a: str, b: str) -> float:
        return float((masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum())

    def correlation(a: str, b: str) -> float:
        both = np.asarray(ndimage.binary_erosion(masks[a] & masks[b], iterations=2), dtype=bool)
        return float(np.corrcoef(nuclei[a][both], nuclei[b][both])[0, 1])

    same_iou, other_iou, same_r, other_r = [], [], [], []
    for k in range(6):
        he, next_he = f"ms-case-{k:03d}_HE", f"ms-case-{(k + 1) % 6:03d}_HE"
        for stain in DEFAULT_STAINS[1:]:
            same_iou.append(iou(he, f"ms-case-{k:03d}_{stain}"))
            same_r.append(correlation(he, f"ms-case-{k:03d}_{stain}"))
        other_iou.append(iou(he, next_he))
        other_r.append(correlation(he, next_he))
        other_r.append(correlation(f"ms-case-{k:03d}_ER", f"ms-case-{(k + 1) % 6:03d}_ER"))
    assert min(same_iou) > 0.7 and np.mean(same_iou) > np.mean(other_iou) + 0.25
    assert min(same_r) > 0.6 and max(np.abs(other_r)) < 0.45
    assert np.mean(same_r) > np.mean(np.abs(other_r)) + 0.5


def test_sections_are_not_perfectly_aligned_but_close():
    rng = np.random.default_rng(0)
    case = random_case(768, 576, positive=True, rng=rng)
    from medssl.synthetic.multistain import case_sections

    sections = case_sections(case, DEFAULT_STAINS, rng)
    corners = np.array([[0.0, 0.0], [768.0, 0.0], [0.0, 576.0], [768.0, 576.0]])
    for section in sections.values():
        u, v = section.motion.to_case(corners[:, 0], corners[:, 1])
        moved = np.hypot(u - corners[:, 0], v - corners[:, 1])
        assert 0 < moved.max() < 60  # a few tens of level-0 pixels at most, never zero
    assert len({s.motion for s in sections.values()}) == len(DEFAULT_STAINS)


def test_the_label_shows_in_er_and_pr_and_not_in_the_distractor_stains(full_cohort, level_one):
    rows = read_rows(full_cohort)
    label = {r["case_id"]: r["label"] for r in rows}
    brown = {(r["case_id"], r["stain"]): brown_fraction(level_one[r["slide_id"]]) for r in rows}

    def by_label(stain: str, value: str) -> list[float]:
        return [brown[case, stain] for case in label if label[case] == value]

    for stain in ("ER", "PR"):
        assert min(by_label(stain, "positive")) > 0.03  # clearly brown: several per cent of the tissue
        assert min(by_label(stain, "positive")) > 5 * max(by_label(stain, "negative"))
    for stain in ("HER2", "KI67"):  # distractors: the label does not order them
        assert max(by_label(stain, "negative")) > min(by_label(stain, "positive"))
        assert max(by_label(stain, "negative")) > 0.02  # and they do stain negative cases
    assert max(brown[case, HE] for case in label) < 0.005  # no DAB in H&E


def test_region_fractions_follow_the_label_for_er_and_pr_only():
    """Over many cases (geometry only, nothing rendered): ER covers 20-40 % of the tissue in positive
    cases and at most a few per cent in negative ones, PR is a subset of ER, the H&E cue sits on ER's
    regions, and HER2/Ki-67 cover as much in negative as in positive cases."""
    fractions: dict[str, list[float]] = {s: [] for s in DEFAULT_STAINS}
    labels = []
    for k in range(200):
        case = random_case(384, 288, positive=k % 2 == 1, rng=np.random.default_rng([7, k]))
        cell = case.regions["ER"].cell
        rows, cols = case.regions["ER"].mask.shape
        xs, ys = np.meshgrid((np.arange(cols) + 0.5) * cell, (np.arange(rows) + 0.5) * cell)
        tissue = case.layout.tissue_at(xs, ys)
        for stain in DEFAULT_STAINS:
            fractions[stain].append(float(case.regions[stain].mask[tissue].mean()))
        er, pr = case.regions["ER"].mask, case.regions["PR"].mask
        assert not (pr & ~er).any()  # PR within ER
        assert np.array_equal(case.regions[HE].mask, er)
        labels.append(k % 2)
    labels = np.array(labels, dtype=bool)
    er = np.array(fractions["ER"])
    assert er[labels].min() > 0.15 and er[labels].max() < 0.45 and er[~labels].max() < 0.05
    for stain in ("HER2", "KI67"):
        f = np.array(fractions[stain])
        assert abs(f[labels].mean() - f[~labels].mean()) < 0.04
        assert abs(np.corrcoef(f, labels)[0, 1]) < 0.2
        assert f[~labels].max() > 0.2  # distractors are not empty in negative cases


def test_the_he_cue_scales_haematoxylin_inside_the_label_regions_only():
    """Closed form: inside the label regions the H&E haematoxylin density is ``1 + he_cue`` times what it is
    without the cue (measured back with scikit-image's colour deconvolution); outside nothing changes; the
    slide-mean haematoxylin of a positive case rises only a little."""
    case = random_case(512, 384, positive=True, rng=np.random.default_rng(5))
    plain = StainedSection(case, HE, RigidMotion(), he_cue=0.0)
    cued = dataclasses.replace(plain, he_cue=0.2)
    without, with_cue = plain.render(0, 0, 512, 384), cued.render(0, 0, 512, 384)
    xs, ys = np.meshgrid(np.arange(512) + 0.5, np.arange(384) + 0.5)
    inside = plain.positive_at(xs, ys)
    tissue = case.layout.tissue_at(xs, ys)
    assert 0.1 < inside.sum() / tissue.sum() < 0.5
    np.testing.assert_array_equal(without[~inside], with_cue[~inside])
    h0, h1 = rgb2hed(without)[..., 0], rgb2hed(with_cue)[..., 0]
    dark = inside & (h0 > 0.03)  # uint8 rounding makes faint pixels' ratios noisy
    assert np.median(h1[dark] / h0[dark]) == pytest.approx(1.2, abs=0.03)
    rise = h1[tissue].mean() / h0[tissue].mean() - 1
    assert 0.01 < rise < 0.1
    assert (rgb2hed(with_cue)[..., 2][tissue] > BROWN).mean() < 0.005


def test_texture_sampling_mirrors_seamlessly_in_both_directions():
    """Against an independent construction: the texture padded symmetrically (numpy's 'symmetric')."""
    tex = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    tiled = np.pad(tex, ((6, 6), (8, 8), (0, 0)), mode="symmetric")  # covers -6..8 rows, -8..11 columns
    ys, xs = np.meshgrid(np.arange(-6, 9), np.arange(-8, 12), indexing="ij")
    np.testing.assert_array_equal(sample_texture(tex, xs + 0.5, ys + 0.5, 1.0), tiled)
    np.testing.assert_array_equal(sample_texture(tex, 2 * xs + 1.0, 2 * ys + 1.0, 2.0), tiled)


def test_tiling_a_two_case_cohort_records_case_and_stain(full_cohort, tmp_path):
    rows = [r for r in read_rows(full_cohort) if r["case_id"] in ("ms-case-000", "ms-case-001")]
    rows = [r for r in rows if r["stain"] in (HE, "ER")]  # a QC picture per slide costs ~0.4 s
    manifest = tmp_path / "two.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**r, "path": str(full_cohort.parent / r["path"])} for r in rows)
    summary = tile_slides([manifest], tmp_path / "cache", TilingParams(target_mpp=1.0, tile_size=64), progress=False)
    assert not summary.failed
    cache = SlideCache(tmp_path / "cache")
    assert sorted(cache.ids) == sorted(r["slide_id"] for r in rows)
    for row in rows:
        meta = cache.metadata(row["slide_id"])
        assert (meta["case_id"], meta["stain"], meta["label"], meta["split"]) == (
            row["case_id"],
            row["stain"],
            row["label"],
            row["split"],
        )
        assert meta["mpp"] == pytest.approx(0.5)
        assert 4 <= meta["num_tiles"] <= 24  # 768 × 576 at 0.5 µm/px: a 6 × 4 grid of 64-px tiles at 1 µm/px
