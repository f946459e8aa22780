"""The scanline polygon fill against its oracle, ``skimage.draw.polygon``: the same pixels on awkward
polygons (on pixel centres, axis-aligned, self-touching, tiny, off the grid), and RT Structure Set
contours (holes, several slices) rasterised as the per-pixel skimage fill did."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage.draw import polygon

from medssl.preprocess import polygon_fill
from medssl.preprocess.dicom_labels import contour_points, rasterise_contours
from medssl.preprocess.polygon_fill import fill_polygon


def skimage_mask(rows, columns, shape) -> np.ndarray:
    rr, cc = polygon(rows, columns, shape=shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rr, cc] = True
    return mask


def scanline_mask(rows, columns, shape) -> np.ndarray:
    (row, column), box = fill_polygon(np.asarray(rows), np.asarray(columns), shape)
    mask = np.zeros(shape, dtype=bool)
    mask[row : row + box.shape[0], column : column + box.shape[1]] = box
    return mask


def awkward_polygons(rng: np.random.Generator, count: int):
    """``count`` (rows, columns, shape) of eight kinds, cycling; coordinates reach past the grid."""
    for index in range(count):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        n = int(rng.integers(1, 10))
        kind = index % 8
        if kind == 0:  # anything: concave, self-intersecting, partly outside
            rows, columns = rng.uniform(-4, 34, n), rng.uniform(-4, 34, n)
        elif kind == 1:  # vertices on pixel centres
            rows, columns = rng.integers(-2, 32, n).astype(float), rng.integers(-2, 32, n).astype(float)
        elif kind == 2:  # on pixel centres and halfway between
            rows, columns = rng.integers(-4, 64, n) / 2, rng.integers(-4, 64, n) / 2
        elif kind == 3:  # convex, round, sub-pixel jitter
            angles = np.sort(rng.uniform(0, 2 * np.pi, max(n, 3)))
            radius, centre = rng.uniform(0.2, 15), rng.uniform(0, 30, 2)
            rows, columns = centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)
        elif kind == 4:  # tiny, within a pixel or two
            rows, columns = rng.uniform(3, 4.5, n), rng.uniform(3, 4.5, n)
        elif kind == 5:  # axis-aligned rectangle
            top, left = rng.integers(-3, 25, 2) / rng.choice([1, 2, 4])
            height, width = rng.integers(0, 12, 2) / rng.choice([1, 2, 3])
            rows, columns = np.array([top, top, top + height, top + height]), np.array([left, left + width] * 2)
            columns = columns[[0, 1, 3, 2]]
        elif kind == 6:  # self-touching: a vertex visited twice (bow tie / figure eight through it)
            middle = rng.integers(5, 20, 2).astype(float)
            a, b = rng.uniform(2, 8, 2)
            rows = np.array([middle[0], middle[0] - a, middle[0] - a, middle[0], middle[0] + b, middle[0] + b])
            columns = np.array([middle[1], middle[1] - a, middle[1] + a, middle[1], middle[1] + b, middle[1] - b])
        else:  # a star: concave, edges through pixel centres at rational slopes
            spikes = int(rng.integers(3, 8))
            angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False)
            radii = np.where(np.arange(2 * spikes) % 2 == 0, rng.integers(4, 14), rng.integers(1, 4))
            rows, columns = np.round(14 + radii * np.cos(angles)), np.round(14 + radii * np.sin(angles))
        yield rows, columns, shape


def test_scanline_fill_draws_exactly_skimages_pixels():
    rng = np.random.default_rng(7)
    for rows, columns, shape in awkward_polygons(rng, 800):
        expected = skimage_mask(rows, columns, shape)
        np.testing.assert_array_equal(scanline_mask(rows, columns, shape), expected, f"{rows}, {columns}, {shape}")
    # A body-like outline: 300 points on a 256 x 256 slice, edges at every slope.
    angles = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    rows = 127.5 + 100 * np.cos(angles) + 6 * np.sin(9 * angles)
    columns = 120.25 + 85 * np.sin(angles) + 3 * np.cos(5 * angles)
    body = skimage_mask(rows, columns, (256, 256))
    assert body.sum() > 22_000
    np.testing.assert_array_equal(scanline_mask(rows, columns, (256, 256)), body)


def test_boundary_rule_is_skimages_on_a_square_with_centres_on_its_edges():
    # Rows 2..5, columns 1..4 on the boundary: skimage keeps edge and vertex pixels; so must we.
    rows, columns = np.array([2.0, 2.0, 5.0, 5.0]), np.array([1.0, 4.0, 4.0, 1.0])
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:6, 1:5] = True
    np.testing.assert_array_equal(skimage_mask(rows, columns, (8, 8)), expected)
    np.testing.assert_array_equal(scanline_mask(rows, columns, (8, 8)), expected)
    # Off the grid entirely, and a polygon of one or two points.
    assert not scanline_mask(rows + 20, columns, (8, 8)).any()
    assert not scanline_mask(rows - 20, columns - 20, (8, 8)).any()
    np.testing.assert_array_equal(scanline_mask([3.0], [2.0], (8, 8)), skimage_mask([3.0], [2.0], (8, 8)))
    np.testing.assert_array_equal(scanline_mask([3.0, 5.0], [2.0, 2.0], (8, 8)), skimage_mask([3, 5], [2, 2], (8, 8)))


def test_crossings_rounding_cannot_place_are_left_to_skimage(monkeypatch):
    # A vertex 1e17 pixels away: rounding moves the crossings by many pixels, so the fill must not guess.
    calls = []
    original = polygon_fill._skimage_fill

    def recording(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(polygon_fill, "_skimage_fill", recording)
    rows, columns = np.array([2.0, 9.3, 5.7]), np.array([1.2, 3.1, 1e17])
    np.testing.assert_array_equal(scanline_mask(rows, columns, (12, 12)), skimage_mask(rows, columns, (12, 12)))
    assert len(calls) == 1


def previous_rasterise(contours, affine_lps, shape) -> np.ndarray:
    """The per-pixel fill ``rasterise_contours`` used before the scanline one (the slice checks aside)."""
    to_voxel = np.linalg.inv(affine_lps)
    mask = np.zeros(shape, dtype=bool)
    for points in contours:
        ijk = points @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        mask[:, :, int(np.round(ijk[:, 2].mean()))] ^= skimage_mask(ijk[:, 0], ijk[:, 1], shape[:2])
    return mask


def test_rasterised_contours_with_holes_match_the_per_pixel_fill():
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-20.0, -18.0, 5.0)
    shape = (64, 48, 4)

    def ring(radius, k, n=97, centre=(2.0, -1.0)):
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        xs, ys = centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)
        return np.stack([xs, ys, np.full(n, 5.0 + 2.5 * k)], axis=1)

    square = np.array([[-20.0, -18.0, 5.0], [-13.0, -18.0, 5.0], [-13.0, -11.0, 5.0], [-20.0, -11.0, 5.0]])
    contours = [ring(15.0, 1), ring(6.0, 1), ring(40.0, 2), square, ring(3.0, 3, n=5, centre=(-19.0, 14.0))]
    expected = previous_rasterise(contours, affine, shape)
    mask = rasterise_contours(contours, affine, shape)
    np.testing.assert_array_equal(mask, expected)
    assert mask[31, 24, 1] == 0 and mask[31 + 14, 24, 1] == 1  # the hole at the centre, the ring around it


@pytest.mark.parametrize("implicit", [False, True])
def test_contour_points_parse_ds_text_as_pydicom_does(tmp_path, implicit):
    texts = ["-180.0", " 12.5", "1e2 ", "0.1", "-0.3000000000001", "7", "1.25E-3", "+4", "-0"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    item = Dataset()
    item.file_meta = meta
    item.ContourData = texts
    path = tmp_path / "contour.dcm"
    item.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    raw = pydicom.dcmread(path, force=True)
    points = contour_points(raw)
    assert points.shape == (3, 3)
    np.testing.assert_array_equal(points.ravel(), np.asarray(pydicom.dcmread(path, force=True).ContourData, float))
    np.testing.assert_array_equal(contour_points(item).ravel(), [float(t) for t in texts])  # already decoded
